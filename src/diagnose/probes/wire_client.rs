//! A bare PostgreSQL-protocol client for the probes no driver can run: a
//! second Parse of a name the connection already has, a Bind of a name it
//! never had (sqlx and tokio-postgres number their statements and never
//! send either). Plain TCP; trust, cleartext or SCRAM-SHA-256 logins. A
//! probe's client, not a driver: it reads what comes back and says how the
//! connection ended.

use std::io;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::DbUrl;

/// An ErrorResponse, as far as the probes read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// A logged-in connection.
pub(crate) struct WireClient {
    stream: TcpStream,
}

/// A frontend message: tag and body.
pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A Parse of `name` for `sql`, no parameter types.
pub(crate) fn parse(name: &str, sql: &str) -> Vec<u8> {
    let body = [name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat();
    message(b'P', &body)
}

/// A Bind of the unnamed portal to statement `name`, no parameters.
pub(crate) fn bind(name: &str) -> Vec<u8> {
    let body = [b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"].concat();
    message(b'B', &body)
}

/// A simple Query.
pub(crate) fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// A Sync.
pub(crate) fn sync() -> Vec<u8> {
    message(b'S', b"")
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl WireClient {
    /// Connects and logs in as `url` says (plain TCP), within `limit`.
    pub(crate) async fn connect(url: &DbUrl, limit: Duration) -> io::Result<WireClient> {
        tokio::time::timeout(limit, WireClient::login(url))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no login within the limit"))?
    }

    async fn login(url: &DbUrl) -> io::Result<WireClient> {
        let (user, password) = url.credentials();
        let stream = TcpStream::connect((url.host(), url.port())).await?;
        stream.set_nodelay(true)?;
        let mut client = WireClient { stream };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user.as_str()), ("database", &url.database())] {
            body.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
        }
        body.push(0);
        let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        client.send(&startup).await?;
        let mut scram = None;
        loop {
            let (tag, body) = client.read().await?;
            match (
                tag,
                body.get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ) {
                (b'R', Some(0)) => {}
                (b'R', Some(3)) => {
                    let reply = message(b'p', &[password.as_bytes(), b"\0"].concat());
                    client.send(&reply).await?;
                }
                (b'R', Some(10)) => {
                    let s = Scram::new(&password);
                    let first = s.client_first();
                    let mut reply = b"SCRAM-SHA-256\0".to_vec();
                    reply.extend_from_slice(&(first.len() as u32).to_be_bytes());
                    reply.extend_from_slice(first.as_bytes());
                    client.send(&message(b'p', &reply)).await?;
                    scram = Some(s);
                }
                (b'R', Some(11)) => {
                    let s = scram
                        .as_ref()
                        .ok_or_else(|| protocol("SASL out of order"))?;
                    let last = s.client_final(&body[4..])?;
                    client.send(&message(b'p', last.as_bytes())).await?;
                }
                (b'R', Some(12)) => {}
                (b'R', _) => return Err(protocol("an authentication method the probe lacks")),
                (b'E', _) => {
                    let e = parse_error(&body);
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{} {}", e.code, e.message),
                    ));
                }
                (b'Z', _) => return Ok(client),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    /// Writes `bytes` as they are.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next backend message; `UnexpectedEof` when the server closed.
    pub(crate) async fn read(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len < 4 {
            return Err(protocol("a message shorter than its length"));
        }
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).await?;
        Ok((head[0], body))
    }

    /// Reads up to ReadyForQuery: the first error on the way, or
    /// `Ok(None)` when none came. The stream's end after an error is that
    /// error (a FATAL one ends the connection); without one, an `Err`.
    pub(crate) async fn until_ready(&mut self) -> io::Result<Option<ServerError>> {
        let mut first = None;
        loop {
            match (self.read().await, first.is_some()) {
                (Ok((b'Z', _)), _) => return Ok(first),
                (Ok((b'E', body)), false) => first = Some(parse_error(&body)),
                (Ok(_), _) => {}
                (Err(_), true) => return Ok(first),
                (Err(e), false) => return Err(e),
            }
        }
    }

    /// After an error: whether the connection still answers a Sync (else
    /// the server closed it).
    pub(crate) async fn still_open(&mut self) -> bool {
        if self.send(&sync()).await.is_err() {
            return false;
        }
        matches!(self.until_ready().await, Ok(None))
    }

    /// Ends the session politely.
    pub(crate) async fn terminate(mut self) {
        let _ = self.send(&message(b'X', b"")).await;
    }
}

/// The fields of an ErrorResponse body (`V` before `S` for the severity).
pub(crate) fn parse_error(body: &[u8]) -> ServerError {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    let mut localized = String::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'V' => e.severity = value,
            b'S' => localized = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized;
    }
    e
}

/// SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL's clients speak it: no
/// channel binding, the user name left to the startup packet.
struct Scram {
    password: String,
    nonce: String,
}

impl Scram {
    fn new(password: &str) -> Scram {
        let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>());
        Scram {
            password: password.to_string(),
            nonce,
        }
    }

    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare())
    }

    fn client_final(&self, server_first: &[u8]) -> io::Result<String> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| protocol("SASL: not UTF-8"))?;
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(k))
                .ok_or_else(|| protocol("SASL: a field is missing"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err(protocol("SASL: the server's nonce is not ours"));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64
            .decode(field("s=")?)
            .map_err(|_| protocol("SASL: a bad salt"))?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| protocol("SASL: a bad count"))?;
        let salted =
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(self.password.as_bytes(), &salt, iterations);
        let mac = |key: &[u8], data: &[u8]| {
            let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes()
        };
        let client_key = mac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.first_bare());
        let signature = mac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        Ok(format!("{without_proof},p={}", b64.encode(proof)))
    }
}
