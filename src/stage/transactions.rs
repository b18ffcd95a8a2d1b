//! Supavisor's transaction pooling (port 6543, the flag off): a client's
//! transactions run on whichever of its pool's links is idle, the one
//! released last first (Supavisor's pools are LIFO), so state a client
//! leaves on a link outside a transaction stays there: a tracked `SET TIME
//! ZONE` reaches the next client of that link and is missing on the
//! setter's other links, as on Supavisor, where PgBouncer alone keeps it per
//! client and re-applies it.
//!
//! A link is a login of the stage to PgBouncer (to PostgreSQL itself for a
//! login naming a `search_path`: then a link is a backend, as Supavisor's):
//! each client's own login
//! (its authentication relayed, so the stage needs no password) joins the
//! pool of its startup parameters, and a client leaving takes one idle link
//! out, so a pool holds as many links as it has clients and a client
//! without a link always finds one idle. PgBouncer keeps each link's
//! tracked parameters and hands it backends per transaction beneath.
//! Clients get keys of the stage's own for CancelRequests, which reach
//! the link the client holds at that moment.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::stage::wire::{Boundaries, Header};

/// One direction of a link, boxed: plain and TLS links share a pool.
pub(crate) type Reader = Box<dyn AsyncRead + Unpin>;
/// The other direction.
pub(crate) type Writer = Box<dyn AsyncWrite + Unpin>;

/// A login of the stage to PgBouncer (or to PostgreSQL: [`BackendKey`]),
/// and the cancel key its upstream gave it.
pub(crate) struct Link {
    pub read: Reader,
    pub write: Writer,
    pub key: BackendKey,
}

/// Where a CancelRequest for a link goes: its upstream's key for it, and
/// whether that upstream is PostgreSQL itself (a login naming a
/// `search_path`) rather than PgBouncer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BackendKey {
    pub key: [u8; 8],
    pub direct: bool,
}

/// What a CancelRequest with a client's stage key reaches: the key of the
/// link it holds, if it holds one.
pub(crate) type Holding = Rc<Cell<Option<BackendKey>>>;

/// The stage's pools (by startup parameters as sent on, and TLS) and the
/// clients' cancel keys.
#[derive(Default)]
pub(crate) struct Pools {
    idle: RefCell<HashMap<Vec<u8>, Vec<Link>>>,
    cancels: RefCell<HashMap<[u8; 8], Holding>>,
    /// Session-mode clients on links straight to PostgreSQL, per pool:
    /// PgBouncer's client cap does not see them.
    seated: RefCell<HashMap<Vec<u8>, u32>>,
}

/// A session-mode client's place in its pool, given up when dropped.
pub(crate) struct Seat {
    pools: Rc<Pools>,
    pool: Vec<u8>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seated = self.pools.seated.borrow_mut();
        if let Some(n) = seated.get_mut(&self.pool) {
            *n -= 1;
            if *n == 0 {
                seated.remove(&self.pool);
            }
        }
    }
}

impl Pools {
    /// A place for a session-mode client in `pool`, or `None` when
    /// `pool_size` clients hold one (Supavisor refuses the next).
    pub(crate) fn seat(self: &Rc<Self>, pool: Vec<u8>, pool_size: u32) -> Option<Seat> {
        let mut seated = self.seated.borrow_mut();
        let n = seated.get(&pool).copied().unwrap_or(0);
        if n >= pool_size {
            return None;
        }
        seated.insert(pool.clone(), n + 1);
        drop(seated);
        Some(Seat {
            pools: self.clone(),
            pool,
        })
    }

    /// A new client's cancel key: random, unique among the stage's clients.
    pub(crate) fn register(&self) -> ([u8; 8], Holding) {
        let holding: Holding = Rc::default();
        let mut cancels = self.cancels.borrow_mut();
        loop {
            let key: [u8; 8] = rand::random();
            if let std::collections::hash_map::Entry::Vacant(slot) = cancels.entry(key) {
                slot.insert(holding.clone());
                return (key, holding);
            }
        }
    }

    /// Forgets a client's cancel key: its login failed, or it left.
    pub(crate) fn forget(&self, key: &[u8; 8]) {
        self.cancels.borrow_mut().remove(key);
    }

    /// The upstream's key for what the client with stage key `key` runs now.
    pub(crate) fn cancel_target(&self, key: &[u8]) -> Option<BackendKey> {
        let key: [u8; 8] = key.try_into().ok()?;
        self.cancels.borrow().get(&key)?.get()
    }

    fn give_back(&self, pool: &[u8], link: Link) {
        self.idle
            .borrow_mut()
            .entry(pool.to_vec())
            .or_default()
            .push(link);
    }

    /// The idle link released last: the next transaction's.
    fn take(&self, pool: &[u8]) -> Option<Link> {
        self.take_with(pool, Vec::pop)
    }

    /// A leaving client's share: the pool's longest idle link, closed.
    fn retire(&self, pool: &[u8]) -> Option<Link> {
        self.take_with(pool, |links| (!links.is_empty()).then(|| links.remove(0)))
    }

    /// A link of `pool`'s idle ones, chosen by `pick`; a pool left with none
    /// is forgotten (its key names a test's database: they come and go).
    fn take_with(
        &self,
        pool: &[u8],
        pick: impl FnOnce(&mut Vec<Link>) -> Option<Link>,
    ) -> Option<Link> {
        let mut idle = self.idle.borrow_mut();
        let links = idle.get_mut(pool)?;
        let link = pick(links);
        if links.is_empty() {
            idle.remove(pool);
        }
        link
    }
}

/// Bytes read at a time from a client or a link.
const READ_SIZE: usize = 16 * 1024;

/// Serves a logged-in client whose login made `link`, in pool `pool`,
/// until it leaves; its cancel key was registered as `key`.
pub(crate) async fn serve(
    pools: Rc<Pools>,
    pool: Vec<u8>,
    link: Link,
    key: [u8; 8],
    holding: Holding,
    mut client: (Reader, Writer),
) {
    pools.give_back(&pool, link);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    // What links answer, read into one buffer for the client's whole life.
    let mut from_link = vec![0u8; READ_SIZE];
    let held = loop {
        // Idle: wait for the client's next message, then take a link.
        while Header::read(&buf).is_none() {
            buf.reserve(READ_SIZE);
            match client.0.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match Header::read(&buf) {
            Some(h) if h.tag != b'X' => {}
            _ => break None, // gone, or Terminate
        }
        let Some(mut link) = pools.take(&pool) else {
            break None; // cannot happen: a client without a link finds one idle
        };
        holding.set(Some(link.key));
        let outcome = transaction(&mut buf, &mut from_link, &mut client, &mut link).await;
        holding.set(None);
        match outcome {
            Ok(Released::Idle) => pools.give_back(&pool, link),
            // A link that failed is closed in place of an idle one.
            Ok(Released::Leaving) | Err(_) => break Some(link),
        }
    };
    pools.forget(&key);
    // A link left mid-transaction is closed (PgBouncer rolls it back), as
    // is one that failed; else the client takes its share of idle links
    // with it.
    let closing = match held {
        Some(link) => Some(link),
        None => pools.retire(&pool),
    };
    if let Some(mut link) = closing {
        let _ = link.write.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = link.write.shutdown().await;
    }
}

/// How a transaction on a link ended.
enum Released {
    /// The link is idle (ReadyForQuery `I`, nothing unanswered): back to the pool.
    Idle,
    /// The client ended (Terminate, or closed) while holding the link.
    Leaving,
}

/// What a client's messages still wait for on its link.
#[derive(Default)]
struct Owed {
    /// ReadyForQuery messages still to come (one per Query, Sync, FunctionCall).
    readies: usize,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The last ReadyForQuery's transaction status.
    status: u8,
    /// Bytes of the client's current message still to pass on.
    passing: usize,
}

impl Owed {
    fn idle(&self) -> bool {
        self.readies == 0
            && !self.unsynced
            && self.passing == 0
            && self.status != b'T'
            && self.status != b'E'
    }
}

/// Relays between the client and `link` from the message at the head of
/// `buf` (the client's bytes; `from_link` is the link's read buffer) until
/// the link is idle again or the client leaves.
async fn transaction(
    buf: &mut Vec<u8>,
    from_link: &mut [u8],
    client: &mut (Reader, Writer),
    link: &mut Link,
) -> io::Result<Released> {
    let mut owed = Owed {
        status: b'I',
        ..Owed::default()
    };
    let mut back = ReadyTracker::default();
    loop {
        // Pass on every complete header's message (and what there is of
        // the current one's body).
        let (ready, leaving) = frame_client(buf, &mut owed);
        if ready > 0 {
            link.write.write_all(&buf[..ready]).await?;
            buf.drain(..ready);
        }
        if leaving {
            return Ok(Released::Leaving);
        }
        tokio::select! {
            read = client.0.read_buf(buf) => {
                if read? == 0 {
                    return Ok(Released::Leaving);
                }
            }
            read = link.read.read(from_link) => {
                let n = read?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let (readies, status) = back
                    .advance(&from_link[..n])
                    .ok_or(io::ErrorKind::InvalidData)?;
                client.1.write_all(&from_link[..n]).await?;
                if readies > 0 {
                    owed.readies = owed.readies.saturating_sub(readies);
                    owed.status = status;
                    if owed.idle() && back.at_boundary() {
                        return Ok(Released::Idle);
                    }
                }
            }
        }
        buf.reserve(READ_SIZE);
    }
}

/// How many bytes at the head of `buf` can go to the link, counting what
/// they owe in `owed`, and whether the client sent Terminate (which is not
/// passed on: the link stays PgBouncer's).
fn frame_client(buf: &[u8], owed: &mut Owed) -> (usize, bool) {
    let mut ready = 0;
    loop {
        if owed.passing > 0 {
            let take = owed.passing.min(buf.len() - ready);
            owed.passing -= take;
            ready += take;
            if owed.passing > 0 {
                return (ready, false);
            }
        }
        let Some(header) = Header::read(&buf[ready..]) else {
            return (ready, false);
        };
        let Some(total) = header.total() else {
            return (ready, true); // not the protocol: end the client
        };
        match header.tag {
            b'X' => return (ready, true),
            b'Q' | b'F' => owed.readies += 1,
            b'S' => {
                owed.readies += 1;
                owed.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => owed.unsynced = true,
            _ => {}
        }
        ready += 5;
        owed.passing = total - 5;
    }
}

/// Finds the ReadyForQuery messages in a link's stream and their status.
#[derive(Default)]
struct ReadyTracker {
    bounds: Boundaries,
}

impl ReadyTracker {
    fn at_boundary(&self) -> bool {
        self.bounds.at_boundary()
    }

    /// Consumes `chunk`: how many ReadyForQuery messages ended in it and the
    /// last one's status; `None` when the stream is not framed.
    fn advance(&mut self, chunk: &[u8]) -> Option<(usize, u8)> {
        let (mut readies, mut status) = (0, 0);
        let mut at = 0;
        while at < chunk.len() {
            at += self.bounds.advance(&chunk[at..], true)?;
            // ReadyForQuery's body is its one status byte, the last consumed.
            if self.bounds.at_boundary() && self.bounds.tag() == b'Z' {
                readies += 1;
                status = chunk[at - 1];
            }
        }
        Some((readies, status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn ready_for_query_is_found_across_split_chunks() {
        let mut stream = message(b'C', b"SELECT 1\0");
        stream.extend(message(b'Z', b"I"));
        stream.extend(message(b'Z', b"T"));
        for split in 0..stream.len() {
            let mut t = ReadyTracker::default();
            let (a, b) = stream.split_at(split);
            let (r1, _) = t.advance(a).unwrap();
            let (r2, s2) = t.advance(b).unwrap();
            assert_eq!(r1 + r2, 2, "split {split}");
            assert_eq!(s2, b'T', "split {split}");
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn a_client_owes_a_ready_per_query_and_sync_and_holds_its_link_until_synced() {
        let mut owed = Owed::default();
        let mut stream = message(b'P', b"\0select 1\0\0\0");
        stream.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        let (ready, leaving) = frame_client(&stream, &mut owed);
        assert_eq!((ready, leaving), (stream.len(), false));
        assert!(owed.unsynced && owed.readies == 0 && !owed.idle());
        let sync = message(b'S', b"");
        frame_client(&sync, &mut owed);
        assert!(!owed.unsynced && owed.readies == 1);
        // A Query split mid-body: what came passes on, the rest is owed.
        let query = message(b'Q', b"select 1\0");
        let mut owed = Owed::default();
        assert_eq!(frame_client(&query[..7], &mut owed), (7, false));
        assert_eq!(owed.passing, query.len() - 7);
        // Terminate is kept from the link.
        let mut owed = Owed::default();
        assert_eq!(frame_client(&message(b'X', b""), &mut owed), (0, true));
    }
}
