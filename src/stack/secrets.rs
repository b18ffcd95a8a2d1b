//! A new stack's secrets: its random password and that password's
//! SCRAM-SHA-256 verifier, which PostgreSQL and PgBouncer get instead of
//! the password.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

/// A fresh password: 32 alphanumeric characters (nothing a URL escapes).
pub(crate) fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The SCRAM-SHA-256 verifier of `password` with a random 16-byte salt
/// (RFC 5802/7677, in PostgreSQL's `pg_authid` format). PgBouncer then
/// checks clients with the stored keys (no key derivation of its own per
/// login) and reuses the client's proof to log in to PostgreSQL.
pub(crate) fn scram_verifier(password: &str, iterations: u32) -> String {
    scram_verifier_salted(password, &rand::random::<[u8; 16]>(), iterations)
}

/// [`scram_verifier`] with a given salt. `password` is one of
/// [`random_password`]'s (ASCII: SASLprep leaves it as it is).
fn scram_verifier_salted(password: &str, salt: &[u8], iterations: u32) -> String {
    let mac = |key: &[u8], data: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(data);
        m.finalize().into_bytes()
    };
    // Hi(password, salt, i) of RFC 5802 is PBKDF2 with HMAC-SHA-256, one block.
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations);
    let stored_key = Sha256::digest(mac(&salted, b"Client Key"));
    let server_key = mac(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_is_the_one_postgres_protocol_makes_for_the_same_salt() {
        let password = random_password();
        assert_eq!(password.len(), 32);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        // postgres-protocol (what tokio-postgres sends PostgreSQL) makes
        // its verifiers with 4096 iterations and a random salt: the same
        // salt and count must give the same verifier.
        let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let (head, _keys) = theirs.rsplit_once('$').unwrap();
        let (iterations, salt) = head
            .strip_prefix("SCRAM-SHA-256$")
            .unwrap()
            .split_once(':')
            .unwrap();
        let salt = base64::engine::general_purpose::STANDARD
            .decode(salt)
            .unwrap();
        let ours = scram_verifier_salted(&password, &salt, iterations.parse().unwrap());
        assert_eq!(ours, theirs);
        let random = scram_verifier(&password, 16);
        assert!(random.starts_with("SCRAM-SHA-256$16:"), "{random}");
        assert_ne!(
            random,
            scram_verifier(&password, 16),
            "a random salt each time"
        );
    }
}
