//! One client connection through the stage: its startup (an SSLRequest
//! answered `S` and TLS served with the stack's certificate, or `N` without
//! one; a GSSENCRequest answered `N`; a CancelRequest passed on), then both
//! directions relayed. The login's answers are read a message at a time
//! (Supavisor's words for a wrong password or its session limit). With a
//! per-message rule on, the frontend's typed messages are framed and, for
//! the tags the rules read, checked before they are sent on; the backend's
//! bytes pass as they come, their message boundaries tracked so that a
//! refusal is written between two messages, never inside one. Without one,
//! both directions are copied unframed after the login.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::stage::prepared::{inspects, NamedStatements};
use crate::stage::startup;
use crate::stage::tls::StageTls;
use crate::stage::transactions::{self, BackendKey, Holding, Link, Pools, Reader, Writer};
use crate::stage::wire::{
    error_response, Boundaries, Header, CANCEL_REQUEST, GSSENC_REQUEST, MAX_STARTUP_LEN,
    SSL_REQUEST,
};
use crate::stage::{Address, Rules, Upstream};
use crate::target::profile::WRONG_PASSWORD_DELAY;

/// How long the stage waits for PgBouncer to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at a time in each direction.
const READ_SIZE: usize = 16 * 1024;

/// What a client's first packet asked for.
enum First {
    Startup(Vec<u8>),
    Cancel(Vec<u8>),
}

/// A client's link, plain or TLS (the stage's own end of the handshake).
enum ClientLink {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientLink {
    /// Writes `bytes` to the client (the stage's refusals, before any relay).
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ClientLink::Plain(c) => c.write_all(bytes).await,
            ClientLink::Tls(c) => c.write_all(bytes).await,
        }
    }

    fn boxed(self) -> (Reader, Writer) {
        match self {
            ClientLink::Plain(c) => boxed(c.into_split()),
            ClientLink::Tls(c) => boxed(tokio::io::split(c)),
        }
    }
}

/// Both halves of a link, boxed (plain and TLS links share a pool).
fn boxed(
    (read, write): (
        impl AsyncRead + Unpin + 'static,
        impl AsyncWrite + Unpin + 'static,
    ),
) -> (Reader, Writer) {
    (Box::new(read), Box::new(write))
}

/// The link to PgBouncer: TLS when the client's is.
enum ServerLink {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Serves one client connection until either side closes it.
pub(crate) async fn serve(
    client: TcpStream,
    upstream: Upstream,
    rules: Rules,
    tls: Option<StageTls>,
    pools: Rc<Pools>,
) {
    let _ = client.set_nodelay(true);
    // PgBouncer's TCP handshake goes on while the client sends its first
    // packet: a login waits for one of the two, not both.
    let (opened, dialed) = tokio::join!(open(client, tls.as_ref()), dial(&upstream.pooler));
    let (mut client, first) = match opened {
        Ok(Some(opened)) => opened,
        _ => return,
    };
    let encrypted = matches!(client, ClientLink::Tls(_));
    let tls_upstream = tls.as_ref().filter(|_| encrypted);
    let packet = match first {
        First::Cancel(packet) => {
            return cancel(packet, dialed, &upstream, rules, &pools, tls_upstream).await;
        }
        // Supavisor's rules, or as the client sent it.
        First::Startup(packet) => rules
            .startup
            .and_then(|mode| startup::rewrite(&packet, mode))
            .unwrap_or(packet),
    };
    // A login naming a search_path gets a backend of its own pool, opened
    // with it (the PgBouncer connection dialed meanwhile is dropped).
    let direct = (rules.search_path_direct && startup::names_search_path(&packet))
        .then_some(upstream.direct.as_ref())
        .flatten();
    // A session on PostgreSQL itself: PgBouncer's client cap does not see
    // it, so the stage counts its pool (before it dials: a refused client
    // opens no backend).
    let session_pool_size = rules.session_pool_size.filter(|_| direct.is_some());
    let seat = match session_pool_size {
        Some(pool_size) => match pools.seat(startup::pool_of(&packet), pool_size) {
            Some(seat) => Some(seat),
            None => {
                let words = session_cap_words(pool_size);
                let _ = client
                    .write_all(&error_response("FATAL", "XX000", &words))
                    .await;
                return;
            }
        },
        None => None,
    };
    let (address, dialed) = match direct {
        Some(address) => (address, dial(address).await),
        None => (&upstream.pooler, dialed),
    };
    let linked = match dialed {
        Ok(server) => secure(server, &address.host, tls_upstream).await,
        Err(e) => Err(e),
    };
    let server = match linked {
        Ok(server) => server,
        Err(e) => {
            let what = if direct.is_some() {
                "PostgreSQL"
            } else {
                "PgBouncer"
            };
            let message = format!(
                "pgbouncer-fixtures' Supavisor-like stage cannot reach the stack's {what} \
                 at {address}: {e}. The stack may have stopped: rerun the test (a fresh stack \
                 starts), or see `docker ps --filter label=pgbouncer-fixtures.managed`"
            );
            let error = error_response("FATAL", "08006", &message);
            let _ = client.write_all(&error).await;
            return;
        }
    };
    if rules.pools_transactions {
        let pool = [&[u8::from(encrypted)][..], &packet].concat();
        let (client, server) = (client.boxed(), server.boxed());
        let direct = direct.is_some();
        return start_pooled(packet, pool, direct, client, server, rules, pools).await;
    }
    // A session on PostgreSQL itself gets a cancel key of the stage's: a
    // CancelRequest to the stage must find its backend, not PgBouncer.
    let registered = direct.map(|_| pools.register());
    let key = registered.as_ref().map(|(key, _)| *key);
    let mut login = Login::new(&packet, rules, key);
    login.pinned = registered.map(|(_, holding)| holding);
    // Plain TCP splits without a lock; a TLS stream is split by tokio's.
    match (client, server) {
        (ClientLink::Plain(c), ServerLink::Plain(s)) => {
            let (cr, cw) = c.into_split();
            let (sr, sw) = s.into_split();
            start(packet, (cr, cw), (sr, sw), rules, login).await
        }
        (ClientLink::Tls(c), ServerLink::Tls(s)) => {
            let (cr, cw) = tokio::io::split(c);
            let (sr, sw) = tokio::io::split(s);
            start(packet, (cr, cw), (sr, sw), rules, login).await
        }
        (ClientLink::Plain(c), ServerLink::Tls(s)) => {
            let (cr, cw) = c.into_split();
            let (sr, sw) = tokio::io::split(s);
            start(packet, (cr, cw), (sr, sw), rules, login).await
        }
        (ClientLink::Tls(c), ServerLink::Plain(s)) => {
            let (cr, cw) = tokio::io::split(c);
            let (sr, sw) = s.into_split();
            start(packet, (cr, cw), (sr, sw), rules, login).await
        }
    }
    if let Some(key) = key {
        pools.forget(&key);
    }
    drop(seat);
}

/// Passes a CancelRequest on: a stage key to the upstream of the link its
/// client holds, with that upstream's key; PgBouncer's own keys (session
/// mode) to PgBouncer as they are.
async fn cancel(
    mut packet: Vec<u8>,
    dialed: io::Result<TcpStream>,
    upstream: &Upstream,
    rules: Rules,
    pools: &Pools,
    tls: Option<&StageTls>,
) {
    let (mut address, mut dialed) = (&upstream.pooler, dialed);
    match pools.cancel_target(&packet[8..]) {
        Some(target) => {
            packet[8..].copy_from_slice(&target.key);
            if let (true, Some(direct)) = (target.direct, &upstream.direct) {
                address = direct;
                dialed = dial(direct).await;
            }
        }
        // Every pooled client holds a key of the stage's.
        None if rules.pools_transactions => return,
        None => {}
    }
    let Ok(server) = dialed else { return };
    let _ = match secure(server, &address.host, tls).await {
        Ok(ServerLink::Plain(mut s)) => s.write_all(&packet).await,
        Ok(ServerLink::Tls(mut s)) => s.write_all(&packet).await,
        Err(_) => return,
    };
}

/// Sends the startup packet on, then relays.
async fn start<CR, CW, SR, SW>(
    packet: Vec<u8>,
    client: (CR, CW),
    mut server: (SR, SW),
    rules: Rules,
    login: Login,
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    if server.1.write_all(&packet).await.is_ok() {
        relay(client, server, rules, login).await;
    }
}

/// Sends the startup packet on; once the login is through, the client's
/// link joins `pool` and the client's transactions run on its idle links.
async fn start_pooled(
    packet: Vec<u8>,
    pool: Vec<u8>,
    direct: bool,
    mut client: (Reader, Writer),
    mut server: (Reader, Writer),
    rules: Rules,
    pools: Rc<Pools>,
) {
    let (key, holding) = pools.register();
    let login = Login::new(&packet, rules, Some(key));
    if server.1.write_all(&packet).await.is_err() {
        return pools.forget(&key);
    }
    // The client's answers (SCRAM) go on as they come until the login is
    // through; nothing after it can come before the client has the
    // ReadyForQuery, which ends the login's future first.
    let mut from_client = Vec::new();
    let logged_in = {
        let answering = answer_login(&mut server.0, &mut client.1, &login);
        tokio::pin!(answering);
        loop {
            tokio::select! {
                answered = &mut answering => break answered,
                read = client.0.read_buf(&mut from_client) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break Ok(None);
                    }
                    if server.1.write_all(&from_client).await.is_err() {
                        break Ok(None);
                    }
                    from_client.clear();
                }
            }
        }
    };
    let rest = match logged_in {
        Ok(Some(rest)) => rest,
        _ => return pools.forget(&key),
    };
    if !rest.is_empty() && client.1.write_all(&rest).await.is_err() {
        return pools.forget(&key);
    }
    let link = Link {
        read: server.0,
        write: server.1,
        key: BackendKey {
            key: login.backend_key.get().unwrap_or_default(),
            direct,
        },
    };
    transactions::serve(pools, pool, link, key, holding, client).await;
}

/// What the stage answers in PgBouncer's stead during the login.
struct Login {
    /// Supavisor's answer to a wrong password, naming this user.
    user: Option<String>,
    /// Supavisor's session-mode refusal, naming this pool size.
    session_pool_size: Option<u32>,
    /// The cancel key the client gets in place of PgBouncer's, which is
    /// kept in `backend_key` (transaction pooling: the stage's links move
    /// between clients).
    stage_key: Option<[u8; 8]>,
    backend_key: Cell<Option<[u8; 8]>>,
    /// A session on PostgreSQL itself: the client keeps this link for its
    /// life, so its stage key reaches the backend from the login on.
    pinned: Option<Holding>,
}

impl Login {
    /// The login of StartupMessage `packet` under `rules`; `stage_key`, the
    /// cancel key the client gets instead of PgBouncer's, when pooled.
    fn new(packet: &[u8], rules: Rules, stage_key: Option<[u8; 8]>) -> Login {
        Login {
            // Whose wrong password Supavisor names (its rule: rules.wrong_password).
            user: startup::user(packet).filter(|_| rules.wrong_password),
            session_pool_size: rules.session_pool_size,
            stage_key,
            backend_key: Cell::new(None),
            pinned: None,
        }
    }

    fn watched(&self) -> bool {
        self.user.is_some() || self.session_pool_size.is_some() || self.stage_key.is_some()
    }

    /// Supavisor's answer (its delay, SQLSTATE and words) in place of
    /// PgBouncer's message `tag` with `body`, if it is a refusal the rules
    /// translate.
    fn refusal(&self, tag: u8, body: &[u8]) -> Option<(Duration, &'static str, String)> {
        if tag != b'E' {
            return None;
        }
        if let Some(pool_size) = self.session_pool_size {
            if error_field(body, b'M') == Some(CLIENT_CAP_WORDS) {
                return Some((Duration::ZERO, "XX000", session_cap_words(pool_size)));
            }
        }
        let user = self.user.as_ref().filter(|_| wrong_password(body))?;
        let words = format!("password authentication failed for user \"{user}\"");
        Some((WRONG_PASSWORD_DELAY, "28P01", words))
    }
}

impl ServerLink {
    fn boxed(self) -> (Reader, Writer) {
        match self {
            ServerLink::Plain(s) => boxed(s.into_split()),
            ServerLink::Tls(s) => boxed(tokio::io::split(s)),
        }
    }
}

/// Supavisor's words for a session-mode client over `pool_size`.
fn session_cap_words(pool_size: u32) -> String {
    format!(
        "(EMAXCONNSESSION) max clients reached in session mode - max clients are limited \
         to pool_size: {pool_size}"
    )
}

/// A TCP connection to the upstream at `address`.
async fn dial(address: &Address) -> io::Result<TcpStream> {
    let dialing = TcpStream::connect((address.host.as_str(), address.port));
    let server = within_timeout(dialing).await??;
    server.set_nodelay(true)?;
    Ok(server)
}

/// The link to the upstream on `host` over `server`, TLS when `tls` is given.
async fn secure(server: TcpStream, host: &str, tls: Option<&StageTls>) -> io::Result<ServerLink> {
    Ok(match tls {
        None => ServerLink::Plain(server),
        Some(tls) => {
            let handshake = tls.to_upstream(server, host);
            ServerLink::Tls(Box::new(within_timeout(handshake).await??))
        }
    })
}

/// `step`, or a timeout error after [`UPSTREAM_CONNECT_TIMEOUT`].
async fn within_timeout<T>(step: impl std::future::Future<Output = T>) -> io::Result<T> {
    tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, step)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 10 s"))
}

/// The client's link and its startup packet (or CancelRequest): an
/// SSLRequest is answered `S` and the rest read over TLS when the stage
/// has a certificate, else `N`, as a GSSENCRequest always is. `None` for a
/// malformed packet or a failed handshake, which end the connection.
async fn open(
    mut client: TcpStream,
    tls: Option<&StageTls>,
) -> io::Result<Option<(ClientLink, First)>> {
    loop {
        let (head, len, code) = read_head(&mut client).await?;
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Ok(None);
        }
        if len == 8 && code == SSL_REQUEST {
            if let Some(tls) = tls {
                client.write_all(b"S").await?;
                let mut link = match tls.acceptor.accept(client).await {
                    Ok(link) => link,
                    Err(e) => {
                        tracing::debug!("a client's TLS handshake with the stage failed: {e}");
                        return Ok(None);
                    }
                };
                let (head, len, code) = read_head(&mut link).await?;
                // One negotiation per connection: a second request is not the protocol.
                if !(8..=MAX_STARTUP_LEN).contains(&len) || code == SSL_REQUEST {
                    return Ok(None);
                }
                let first = read_rest(&mut link, head, len, code).await?;
                return Ok(Some((ClientLink::Tls(Box::new(link)), first)));
            }
        }
        if len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST) {
            client.write_all(b"N").await?;
            continue;
        }
        let first = read_rest(&mut client, head, len, code).await?;
        return Ok(Some((ClientLink::Plain(client), first)));
    }
}

/// A startup-phase packet's 8 first bytes, its length and its code.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<([u8; 8], usize, u32)> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    Ok((head, len, code))
}

/// The rest of a startup-phase packet whose head was read.
async fn read_rest<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: [u8; 8],
    len: usize,
    code: u32,
) -> io::Result<First> {
    let mut packet = vec![0u8; len];
    packet[..8].copy_from_slice(&head);
    stream.read_exact(&mut packet[8..]).await?;
    Ok(if code == CANCEL_REQUEST {
        First::Cancel(packet)
    } else {
        First::Startup(packet)
    })
}

/// Relays both directions until one ends (or a refusal has been written).
async fn relay<CR, CW, SR, SW>(client: (CR, CW), server: (SR, SW), rules: Rules, login: Login)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let (client_read, client_write) = client;
    let (server_read, server_write) = server;
    if !rules.named_prepared_statements {
        // No per-message rule: after the login, bytes as they come.
        let front = copy(client_read, server_write);
        let back = copy_after_login(server_read, client_write, login);
        tokio::select! {
            _ = front => {}
            _ = back => {}
        }
        return;
    }
    let (refuse, refusal) = oneshot::channel();
    let front = frontend(client_read, server_write, rules, refuse);
    let back = backend(server_read, client_write, refusal, login);
    // Either end ends the link: dropping both halves closes both sockets.
    tokio::select! {
        _ = front => {}
        _ = back => {}
    }
}

/// One direction, unframed, until its end closes.
async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<u64> {
    tokio::io::copy(&mut from, &mut to).await
}

/// PgBouncer -> client unframed, after the login's answers.
async fn copy_after_login(
    mut server: impl AsyncRead + Unpin,
    mut client: impl AsyncWrite + Unpin,
    login: Login,
) -> io::Result<u64> {
    if login.watched() {
        let Some(rest) = answer_login(&mut server, &mut client, &login).await? else {
            return Ok(0);
        };
        client.write_all(&rest).await?;
    }
    tokio::io::copy(&mut server, &mut client).await
}

/// Client -> PgBouncer. Bytes of a read are sent on only once every
/// complete message in them passed the rules; a refusal drops them (as
/// Supavisor drops the packet it refuses) and stops reading.
async fn frontend(
    mut client: impl AsyncRead + Unpin,
    mut server: impl AsyncWrite + Unpin,
    rules: Rules,
    refuse: oneshot::Sender<Vec<u8>>,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let mut statements = NamedStatements::default();
    // Bytes of a message the rules do not read, still to pass through.
    let mut passing = 0usize;
    loop {
        buf.reserve(READ_SIZE);
        if client.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut ready = 0;
        loop {
            if passing > 0 {
                let take = passing.min(buf.len() - ready);
                passing -= take;
                ready += take;
                if passing > 0 {
                    break;
                }
            }
            let Some(header) = Header::read(&buf[ready..]) else {
                break;
            };
            let Some(total) = header.total() else {
                return Ok(()); // not the protocol: end the link
            };
            if !rules.named_prepared_statements || !inspects(header.tag) {
                ready += 5;
                passing = total - 5;
                continue;
            }
            let Some(message) = buf.get(ready..ready + total) else {
                break; // wait for the rest of a message the rules read
            };
            if let Err(refusal) = statements.check(header.tag, &message[5..]) {
                let _ = refuse.send(refusal.to_wire());
                // The backend task writes the refusal and ends the link.
                return std::future::pending().await;
            }
            ready += total;
        }
        server.write_all(&buf[..ready]).await?;
        buf.drain(..ready);
    }
}

/// PgBouncer -> client, and the refusal, written at a message boundary.
async fn backend(
    mut server: impl AsyncRead + Unpin,
    mut client: impl AsyncWrite + Unpin,
    mut refusal: oneshot::Receiver<Vec<u8>>,
    login: Login,
) -> io::Result<()> {
    let mut bounds = Boundaries::default();
    if login.watched() {
        let Some(rest) = answer_login(&mut server, &mut client, &login).await? else {
            return Ok(());
        };
        let Some(taken) = bounds.advance(&rest, false) else {
            return Ok(());
        };
        client.write_all(&rest[..taken]).await?;
    }
    let mut buf = vec![0u8; READ_SIZE];
    let mut listening = true;
    let mut pending: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            read = server.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                let stop = pending.is_some();
                let Some(taken) = bounds.advance(&buf[..n], stop) else {
                    return Ok(());
                };
                client.write_all(&buf[..taken]).await?;
                if let (Some(error), true) = (&pending, bounds.at_boundary()) {
                    return refuse(&mut client, error).await;
                }
            }
            sent = &mut refusal, if listening => {
                listening = false;
                if let Ok(error) = sent {
                    if bounds.at_boundary() {
                        return refuse(&mut client, &error).await;
                    }
                    pending = Some(error);
                }
            }
        }
    }
}

async fn refuse(client: &mut (impl AsyncWrite + Unpin), error: &[u8]) -> io::Result<()> {
    client.write_all(error).await?;
    client.shutdown().await
}

/// PgBouncer's `max_db_client_connections` refusal, at login.
const CLIENT_CAP_WORDS: &[u8] = b"client connections exceeded (max_db_client_connections)";

/// PgBouncer's answers up to ReadyForQuery, passed on a message at a
/// time: the bytes read after it, or `None` when PgBouncer refused the
/// client, which is answered as Supavisor does when the rules say so
/// (`client_handler/error.ex`): a wrong password
/// (`errors/wrong_password_error.ex`) after 500 ms with FATAL `28P01`
/// `password authentication failed for user "<user>"`, the session cap with
/// FATAL `XX000 (EMAXCONNSESSION) max clients reached in session mode - max
/// clients are limited to pool_size: <n>`; the link ends. Any other error
/// passes as it came.
async fn answer_login(
    server: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    login: &Login,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    loop {
        let mut at = 0;
        while let Some(header) = Header::read(&buf[at..]) {
            let Some(total) = header.total() else {
                return Ok(None); // not the protocol: end the link
            };
            if buf.len() < at + total {
                break;
            }
            if let (b'K', 13, Some(stage_key)) = (header.tag, total, login.stage_key) {
                // BackendKeyData: the client gets the stage's key.
                let mut backend = [0u8; 8];
                backend.copy_from_slice(&buf[at + 5..at + 13]);
                login.backend_key.set(Some(backend));
                if let Some(pinned) = &login.pinned {
                    pinned.set(Some(BackendKey {
                        key: backend,
                        direct: true,
                    }));
                }
                buf[at + 5..at + 13].copy_from_slice(&stage_key);
                at += total;
                continue;
            }
            let body = &buf[at + 5..at + total];
            if header.tag == b'Z' {
                // ReadyForQuery: the login is through.
                client.write_all(&buf[..at + total]).await?;
                return Ok(Some(buf.split_off(at + total)));
            }
            if let Some((delay, sqlstate, words)) = login.refusal(header.tag, body) {
                client.write_all(&buf[..at]).await?;
                tokio::time::sleep(delay).await;
                client
                    .write_all(&error_response("FATAL", sqlstate, &words))
                    .await?;
                client.shutdown().await?;
                return Ok(None);
            }
            at += total;
        }
        client.write_all(&buf[..at]).await?;
        buf.drain(..at);
        buf.reserve(READ_SIZE);
        if server.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Whether an ErrorResponse's body is PgBouncer's refusal of a password:
/// `08P01 SASL authentication failed` (SCRAM, the stack's method) or
/// `28P01 password authentication failed ...`.
fn wrong_password(body: &[u8]) -> bool {
    let (code, message) = (error_field(body, b'C'), error_field(body, b'M'));
    match (code, message) {
        (Some(b"28P01"), _) => true,
        (Some(b"08P01"), Some(m)) => m == b"SASL authentication failed",
        _ => false,
    }
}

/// Field `wanted` of an ErrorResponse's body.
fn error_field(body: &[u8], wanted: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let (value, after) = crate::stage::wire::cstr(after)?;
        if field == wanted {
            return Some(value);
        }
        rest = after;
    }
    None
}
