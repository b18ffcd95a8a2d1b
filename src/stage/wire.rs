//! The PostgreSQL wire protocol, as much as the stage needs: the startup
//! packet's codes, typed message headers (1 byte tag + int32 length, the
//! length counting itself), and the ErrorResponse the stage answers with.

/// The code of an SSLRequest (in place of a protocol version).
pub(crate) const SSL_REQUEST: u32 = 80_877_103;
/// The code of a GSSENCRequest.
pub(crate) const GSSENC_REQUEST: u32 = 80_877_104;
/// The code of a CancelRequest.
pub(crate) const CANCEL_REQUEST: u32 = 80_877_102;
/// The longest startup packet accepted (PostgreSQL's own limit).
pub(crate) const MAX_STARTUP_LEN: usize = 10_000;

/// A typed message's header: its tag and its length (which counts the
/// four length bytes, not the tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub tag: u8,
    pub len: u32,
}

impl Header {
    /// The header at the start of `buf`, if all five bytes are there.
    pub(crate) fn read(buf: &[u8]) -> Option<Header> {
        let bytes: [u8; 5] = buf.get(..5)?.try_into().ok()?;
        Some(Header {
            tag: bytes[0],
            len: u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
        })
    }

    /// The whole message's size on the wire (tag included); `None` for a
    /// length below 4, which no valid message has.
    pub(crate) fn total(self) -> Option<usize> {
        (self.len >= 4).then(|| self.len as usize + 1)
    }
}

/// An ErrorResponse as Supavisor encodes it: its fields sorted by code
/// (`C`, `M`, `S`), no `V` field.
pub(crate) fn error_response(severity: &str, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 24);
    for (field, value) in [(b'C', sqlstate), (b'M', message), (b'S', severity)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The NUL-terminated string at the start of `buf` and what follows it
/// (`None` without a NUL: a malformed message, left to the server).
pub(crate) fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|b| *b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// Tracks where a stream's message boundaries fall, without buffering its
/// bytes: how much of the current message is still to come.
#[derive(Debug, Default)]
pub(crate) struct Boundaries {
    /// Bytes of the current header seen so far (up to 5).
    header: [u8; 5],
    header_seen: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
}

impl Boundaries {
    /// Whether the stream is between two messages.
    pub(crate) fn at_boundary(&self) -> bool {
        self.header_seen == 0 && self.body_left == 0
    }

    /// The tag of the message being read, or, at a boundary, of the one
    /// that just ended.
    pub(crate) fn tag(&self) -> u8 {
        self.header[0]
    }

    /// Consumes `chunk`, stopping at the first boundary it reaches when
    /// `stop_at_boundary`: how many bytes were consumed. `None` when the
    /// stream is not framed (a length below 4).
    pub(crate) fn advance(&mut self, chunk: &[u8], stop_at_boundary: bool) -> Option<usize> {
        let mut at = 0;
        while at < chunk.len() {
            if self.body_left > 0 {
                let take = self.body_left.min(chunk.len() - at);
                self.body_left -= take;
                at += take;
            } else {
                let take = (5 - self.header_seen).min(chunk.len() - at);
                self.header[self.header_seen..self.header_seen + take]
                    .copy_from_slice(&chunk[at..at + take]);
                self.header_seen += take;
                at += take;
                if self.header_seen == 5 {
                    let header = Header::read(&self.header)?;
                    self.body_left = header.total()? - 5;
                    self.header_seen = 0;
                }
            }
            if stop_at_boundary && self.at_boundary() {
                break;
            }
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_has_supavisors_fields_in_order() {
        let e = error_response("FATAL", "XX000", "boom");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
            e.len() - 1
        );
        assert_eq!(&e[5..], b"CXX000\0Mboom\0SFATAL\0\0");
    }

    #[test]
    fn boundaries_are_found_across_split_chunks() {
        // Two messages: 'Z' (len 5, one body byte) and 'C' (len 4, empty).
        let stream = [b'Z', 0, 0, 0, 5, b'I', b'C', 0, 0, 0, 4];
        for split in 0..stream.len() {
            let mut b = Boundaries::default();
            let (first, second) = stream.split_at(split);
            assert_eq!(b.advance(first, false), Some(first.len()));
            assert_eq!(b.at_boundary(), split == 0 || split == 6, "split {split}");
            assert_eq!(b.advance(second, false), Some(second.len()));
            assert!(b.at_boundary());
        }
        let mut b = Boundaries::default();
        assert_eq!(b.advance(&stream, true), Some(6));
        assert_eq!(
            Boundaries::default().advance(&[b'E', 0, 0, 0, 1], false),
            None
        );
    }
}
