//! Supavisor's `named_prepared_statements` feature flag, as a client sees
//! it (Supavisor 2.7+, `lib/supavisor/protocol/prepared_statements*.ex`):
//! each client connection's named statements are kept by name; a Parse of
//! a name it already has, or beyond 100 names (or 1 MB of Parse messages),
//! and a Bind or Describe of a name it does not have, end the connection
//! with a FATAL ErrorResponse; so does a simple Query that holds SQL
//! `PREPARE`, `EXECUTE` or `DEALLOCATE`. Everything else passes untouched:
//! the PgBouncer behind the stage tracks the statements across its server
//! connections, as Supavisor re-prepares them.

use std::collections::HashMap;

use crate::stage::simple_query::uses_sql_prepared_statements;
use crate::stage::wire::{cstr, error_response};

/// Named statements per client connection (Supavisor's `@statement_limit`).
pub(crate) const STATEMENT_LIMIT: usize = 100;
/// Bytes of Parse messages per client connection (`@memory_limit_bytes`).
const MEMORY_LIMIT_BYTES: usize = 1_000_000;
/// The length of the server-side name Supavisor gives a statement
/// (`sv_` + unpadded base64 of a SHA-256), counted in its memory limit.
const SERVER_NAME_LEN: usize = 3 + 43;

/// Why the stage ends a client connection: a FATAL ErrorResponse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The SQLSTATE Supavisor sends.
    pub sqlstate: &'static str,
    /// The message, `(CODE) ...` as Supavisor words it.
    pub message: String,
}

impl Refusal {
    fn new(sqlstate: &'static str, code: &str, text: &str) -> Refusal {
        Refusal {
            sqlstate,
            message: format!("({code}) {text}"),
        }
    }

    /// The ErrorResponse bytes.
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        error_response("FATAL", self.sqlstate, &self.message)
    }
}

/// Whether the flag's rules read messages with this tag (the rest pass
/// without being looked at).
pub(crate) fn inspects(tag: u8) -> bool {
    matches!(tag, b'P' | b'B' | b'C' | b'D' | b'Q')
}

/// One client connection's named statements: name -> bytes counted.
#[derive(Debug, Default)]
pub(crate) struct NamedStatements {
    names: HashMap<Box<[u8]>, usize>,
    bytes: usize,
}

impl NamedStatements {
    /// Applies one frontend message (`tag`, its body after the length);
    /// `Err` when Supavisor would end the connection over it.
    pub(crate) fn check(&mut self, tag: u8, body: &[u8]) -> Result<(), Refusal> {
        match tag {
            b'P' => self.parse(body),
            b'B' => {
                let name = cstr(body).and_then(|(_portal, rest)| cstr(rest));
                match name {
                    Some((name, _)) => self.known(name),
                    None => Ok(()),
                }
            }
            b'D' => match body.split_first() {
                Some((b'S', rest)) => match cstr(rest) {
                    Some((name, _)) => self.known(name),
                    None => Ok(()),
                },
                _ => Ok(()),
            },
            b'C' => {
                if let Some((b'S', rest)) = body.split_first() {
                    if let Some((name, _)) = cstr(rest) {
                        if let Some(size) = self.names.remove(name) {
                            self.bytes -= size;
                        }
                    }
                }
                Ok(())
            }
            b'Q' => {
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                if uses_sql_prepared_statements(sql) {
                    Err(Refusal::new(
                        "XX000",
                        "EPSSIMPLEQUERY",
                        "transaction mode only supports prepared statements using the \
                         Extended Query Protocol",
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn parse(&mut self, body: &[u8]) -> Result<(), Refusal> {
        let Some((name, _)) = cstr(body) else {
            return Ok(());
        };
        if name.is_empty() {
            return Ok(());
        }
        // In Supavisor's order: the count, the name, the memory.
        if self.names.len() >= STATEMENT_LIMIT {
            return Err(Refusal::new(
                "XX000",
                "EMAXPREPARED",
                &format!(
                    "max prepared statements limit reached. Limit: {STATEMENT_LIMIT} per connection"
                ),
            ));
        }
        if self.names.contains_key(name) {
            return Err(Refusal::new(
                "42P05",
                "EPREPAREDDUP",
                &format!("prepared statement {} already exists", inspect(name)),
            ));
        }
        // The size of the Parse message as Supavisor stores it: tag,
        // length and body, with its own name in place of the client's.
        let size = 1 + 4 + body.len() - name.len() + SERVER_NAME_LEN;
        if self.bytes + size > MEMORY_LIMIT_BYTES {
            return Err(Refusal::new(
                "XX000",
                "EMAXPREPAREDMEM",
                "max prepared statements memory limit reached. Limit: 1.0MB per connection",
            ));
        }
        self.bytes += size;
        self.names.insert(name.into(), size);
        Ok(())
    }

    fn known(&self, name: &[u8]) -> Result<(), Refusal> {
        if name.is_empty() || self.names.contains_key(name) {
            Ok(())
        } else {
            Err(Refusal::new(
                "26000",
                "EPREPAREDNOTFOUND",
                &format!("prepared statement {} does not exist", inspect(name)),
            ))
        }
    }
}

/// A name as Elixir's `inspect/1` prints a binary: a quoted string when it
/// is printable UTF-8, else `<<1, 2, ...>>`.
fn inspect(name: &[u8]) -> String {
    let printable = std::str::from_utf8(name).ok().filter(|s| {
        !s.chars()
            .any(|c| c.is_control() && !"\n\t\r\x0b\x0c\x07\x08\x1b".contains(c))
    });
    match printable {
        Some(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            let mut chars = s.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    '\x0b' => out.push_str("\\v"),
                    '\x0c' => out.push_str("\\f"),
                    '\x07' => out.push_str("\\a"),
                    '\x08' => out.push_str("\\b"),
                    '\x1b' => out.push_str("\\e"),
                    '#' if chars.peek() == Some(&'{') => out.push_str("\\#"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        None => {
            let bytes: Vec<String> = name.iter().map(u8::to_string).collect();
            format!("<<{}>>", bytes.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Vec<u8> {
        let mut body = name.as_bytes().to_vec();
        body.extend_from_slice(b"\0select 1\0\0\0");
        body
    }

    fn bind(name: &str) -> Vec<u8> {
        let mut body = b"\0".to_vec();
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(b"\0\0\0\0\0\0\0");
        body
    }

    #[test]
    fn names_are_counted_duplicates_and_unknown_names_refused() {
        let mut s = NamedStatements::default();
        assert_eq!(s.check(b'P', &parse("")), Ok(()));
        assert_eq!(s.check(b'P', &parse("")), Ok(()));
        assert_eq!(s.check(b'B', &bind("")), Ok(()));
        assert_eq!(s.check(b'P', &parse("s1")), Ok(()));
        assert_eq!(s.check(b'B', &bind("s1")), Ok(()));
        assert_eq!(s.check(b'D', b"Ss1\0"), Ok(()));
        let dup = s.check(b'P', &parse("s1")).unwrap_err();
        assert_eq!(dup.sqlstate, "42P05");
        assert_eq!(
            dup.message,
            "(EPREPAREDDUP) prepared statement \"s1\" already exists"
        );
        let missing = s.check(b'B', &bind("nope")).unwrap_err();
        assert_eq!(
            (missing.sqlstate, missing.message.as_str()),
            (
                "26000",
                "(EPREPAREDNOTFOUND) prepared statement \"nope\" does not exist"
            )
        );
        assert!(s.check(b'D', b"Snope\0").is_err());
        assert_eq!(s.check(b'D', b"Pportal\0"), Ok(()));
        // Close of an unknown name passes (Supavisor closes a dummy).
        assert_eq!(s.check(b'C', b"Snope\0"), Ok(()));
        assert_eq!(s.check(b'C', b"Ss1\0"), Ok(()));
        assert!(s.check(b'B', &bind("s1")).is_err());
        assert_eq!(s.check(b'P', &parse("s1")), Ok(()));
    }

    #[test]
    fn the_101st_name_is_refused_and_a_close_makes_room() {
        let mut s = NamedStatements::default();
        for i in 0..STATEMENT_LIMIT {
            assert_eq!(s.check(b'P', &parse(&format!("s{i}"))), Ok(()));
        }
        let over = s.check(b'P', &parse("s100")).unwrap_err();
        assert_eq!(over.sqlstate, "XX000");
        assert_eq!(
            over.message,
            "(EMAXPREPARED) max prepared statements limit reached. Limit: 100 per connection"
        );
        // The count is checked before the name.
        assert!(s
            .check(b'P', &parse("s0"))
            .unwrap_err()
            .message
            .starts_with("(EMAXPREPARED)"));
        assert_eq!(s.check(b'C', b"Ss0\0"), Ok(()));
        assert_eq!(s.check(b'P', &parse("s100")), Ok(()));
    }

    #[test]
    fn a_megabyte_of_parse_messages_is_refused() {
        let mut s = NamedStatements::default();
        let big = format!("select '{}'", "x".repeat(400_000));
        let parse_big = |name: &str| {
            let mut b = name.as_bytes().to_vec();
            b.push(0);
            b.extend_from_slice(big.as_bytes());
            b.extend_from_slice(b"\0\0\0");
            b
        };
        assert_eq!(s.check(b'P', &parse_big("a")), Ok(()));
        assert_eq!(s.check(b'P', &parse_big("b")), Ok(()));
        let e = s.check(b'P', &parse_big("c")).unwrap_err();
        assert_eq!(
            e.message,
            "(EMAXPREPAREDMEM) max prepared statements memory limit reached. Limit: 1.0MB per connection"
        );
    }

    #[test]
    fn sql_prepare_is_refused_and_names_print_as_elixir_prints_them() {
        let mut s = NamedStatements::default();
        let e = s.check(b'Q', b"PREPARE p AS SELECT 1\0").unwrap_err();
        assert_eq!(e.sqlstate, "XX000");
        assert_eq!(
            e.message,
            "(EPSSIMPLEQUERY) transaction mode only supports prepared statements using the \
             Extended Query Protocol"
        );
        assert_eq!(s.check(b'Q', b"select 1\0"), Ok(()));
        assert_eq!(inspect(b"a\"b\\c#{d}"), "\"a\\\"b\\\\c\\#{d}\"");
        assert_eq!(inspect(&[0xff, 1]), "<<255, 1>>");
        let wire = e.to_wire();
        assert!(wire.ends_with(b"SFATAL\0\0"));
    }
}
