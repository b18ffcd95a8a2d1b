//! One client connection through the stage: its startup (SSLRequest and
//! GSSENCRequest answered `N`, CancelRequest passed on), then both
//! directions relayed. The frontend's typed messages are framed and, for
//! the tags the rules read, checked before they are sent on; the backend's
//! bytes pass as they come, their message boundaries tracked so that a
//! refusal is written between two messages, never inside one.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::stage::prepared::{inspects, NamedStatements};
use crate::stage::wire::{
    error_response, Boundaries, Header, CANCEL_REQUEST, GSSENC_REQUEST, MAX_STARTUP_LEN,
    SSL_REQUEST,
};
use crate::stage::{Rules, Upstream};

/// How long the stage waits for PgBouncer to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at a time in each direction.
const READ_SIZE: usize = 16 * 1024;

/// What a client's first packet asked for.
enum First {
    Startup(Vec<u8>),
    Cancel(Vec<u8>),
}

/// Serves one client connection until either side closes it.
pub(crate) async fn serve(mut client: TcpStream, upstream: Upstream, rules: Rules) {
    let _ = client.set_nodelay(true);
    let first = match read_startup(&mut client).await {
        Ok(Some(first)) => first,
        _ => return,
    };
    let mut server = match connect(&upstream).await {
        Ok(server) => server,
        Err(e) => {
            let message = format!(
                "pgbouncer-fixtures' Supavisor-like stage cannot reach the stack's PgBouncer \
                 at {}:{}: {e}. The stack may have stopped: rerun the test (a fresh stack \
                 starts), or see `docker ps --filter label=pgbouncer-fixtures.managed`",
                upstream.host, upstream.port
            );
            let _ = client
                .write_all(&error_response("FATAL", "08006", &message))
                .await;
            return;
        }
    };
    match first {
        First::Cancel(packet) => {
            let _ = server.write_all(&packet).await;
        }
        First::Startup(packet) => {
            if server.write_all(&packet).await.is_ok() {
                relay(client, server, rules).await;
            }
        }
    }
}

async fn connect(upstream: &Upstream) -> io::Result<TcpStream> {
    let connecting = TcpStream::connect((upstream.host.as_str(), upstream.port));
    let server = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 10 s"))??;
    server.set_nodelay(true)?;
    Ok(server)
}

/// The startup packet (or a CancelRequest), after answering `N` to any
/// SSLRequest or GSSENCRequest before it: the stage serves no TLS.
/// `None` for a malformed packet, which ends the connection.
async fn read_startup(client: &mut TcpStream) -> io::Result<Option<First>> {
    loop {
        let mut head = [0u8; 8];
        client.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Ok(None);
        }
        if len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST) {
            client.write_all(b"N").await?;
            continue;
        }
        let mut packet = vec![0u8; len];
        packet[..8].copy_from_slice(&head);
        client.read_exact(&mut packet[8..]).await?;
        return Ok(Some(if code == CANCEL_REQUEST {
            First::Cancel(packet)
        } else {
            First::Startup(packet)
        }));
    }
}

/// Relays both directions until one ends (or a refusal has been written).
async fn relay(client: TcpStream, server: TcpStream, rules: Rules) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (refuse, refusal) = oneshot::channel();
    let front = frontend(client_read, server_write, rules, refuse);
    let back = backend(server_read, client_write, refusal);
    // Either end ends the link: dropping both halves closes both sockets.
    tokio::select! {
        _ = front => {}
        _ = back => {}
    }
}

/// Client -> PgBouncer. Bytes of a read are sent on only once every
/// complete message in them passed the rules; a refusal drops them (as
/// Supavisor drops the packet it refuses) and stops reading.
async fn frontend(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
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
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut refusal: oneshot::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut bounds = Boundaries::default();
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

async fn refuse(client: &mut OwnedWriteHalf, error: &[u8]) -> io::Result<()> {
    client.write_all(error).await?;
    client.shutdown().await
}
