//! TLS as Supabase serves it: every stack gets its own certificate authority
//! and server certificate, made here when the stack is created (no private
//! key is committed or reused anywhere), handed to the pair's containers as
//! PEM texts (`docker::containers::TlsPems`). Both ports offer TLS; clients
//! that do not ask for it keep working unless the stack requires it.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

use crate::docker::containers::TlsPems;
use crate::error::{Error, Result};

/// Makes a CA and a server certificate for `host` (plus `localhost`,
/// `127.0.0.1` and `::1`), valid for the stack's lifetime and then some.
pub(crate) fn generate(host: &str) -> Result<TlsPems> {
    let failed = |e: rcgen::Error| Error::Stack {
        reason: format!("cannot make the stack's TLS certificate: {e}"),
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pgbouncer-fixtures stack CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !names.iter().any(|n| n == host) {
        names.push(host.to_string());
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut server = CertificateParams::new(names).map_err(failed)?;
    server.distinguished_name.push(DnType::CommonName, host);
    let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
    Ok(TlsPems {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stack_gets_its_own_certificate() {
        let a = generate("127.0.0.1").unwrap();
        let b = generate("127.0.0.1").unwrap();
        assert!(a.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.key_pem.contains("PRIVATE KEY"));
        assert_ne!(a.key_pem, b.key_pem);
        assert_ne!(a.ca_pem, b.ca_pem);
    }
}
