//! TLS on both legs of the stage, as Supavisor serves it: towards clients
//! with the stack's own server certificate (the one PostgreSQL and PgBouncer
//! serve, signed by the stack's CA, so `verify-full` with
//! `TestDb::ca_cert_pem()` passes here as behind PgBouncer), and towards
//! PgBouncer for a client that came with TLS, checked against the same CA
//! (a stack that requires TLS refuses a plain link itself). On ring, as
//! sqlx's `tls-rustls-ring-webpki`: no process-wide provider is installed.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};
use crate::stage::wire::SSL_REQUEST;

/// The stack's certificate material, as the stage is given it (PEM text;
/// the stage knows nothing of where a stack keeps it).
#[derive(Clone)]
pub(crate) struct Certificates {
    /// The certificate the stack's ports serve.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The stack's CA, which signed it.
    pub ca_pem: String,
}

impl Certificates {
    /// The stack's server certificate and key (PEM) with its CA, when it
    /// has both; the stage answers `N` to TLS without them.
    pub(crate) fn of(server: Option<(&str, &str)>, ca_pem: Option<&str>) -> Option<Certificates> {
        let ((cert_pem, key_pem), ca_pem) = (server?, ca_pem?);
        Some(Certificates {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            ca_pem: ca_pem.to_string(),
        })
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

/// What the stage serves and checks TLS with (cheap to clone).
#[derive(Clone)]
pub(crate) struct StageTls {
    pub acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// The ALPN name of PostgreSQL 17's direct TLS negotiation: offered so a
/// client that asks for it is not refused (one that asks for none is served).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

impl StageTls {
    /// The server and client configurations for `certs`.
    pub(crate) fn new(certs: &Certificates) -> Result<StageTls> {
        let failed = |what: &str, e: &dyn std::fmt::Display| Error::Stage {
            reason: format!(
                "the stack's TLS certificate cannot serve the Supavisor-like stage ({what}: {e}); \
                 remove the stack with `pgbouncer-fixtures gc` so that a new one is made"
            ),
        };
        let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| failed("its certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
            .map_err(|e| failed("its key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("its protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| failed("its key pair", &e))?;
        server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];

        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| failed("its CA", &e))?;
            roots.add(ca).map_err(|e| failed("its CA", &e))?;
        }
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("its protocol versions", &e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(StageTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// Asks PgBouncer at `host` for TLS on `server` (an SSLRequest) and
    /// makes the handshake, checking its certificate for `host`.
    pub(crate) async fn to_upstream(
        &self,
        mut server: TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut request = 8u32.to_be_bytes().to_vec();
        request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        server.write_all(&request).await?;
        if server.read_u8().await? != b'S' {
            return Err(std::io::Error::other(
                "PgBouncer does not serve TLS (it answered the SSLRequest with N)",
            ));
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::other(format!("{host} is no TLS server name: {e}")))?;
        self.connector.connect(name, server).await
    }
}
