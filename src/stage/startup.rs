//! Supavisor's startup rules: what of a client's StartupMessage reaches the
//! database. Supavisor (2.9, `db_handler.ex` `send_startup`) opens its
//! backends with `user`, `database`, `application_name` and, when the
//! client named one (top level, else `-c search_path=...` or
//! `--search_path=...` in `options`: `protocol_helpers.ex`), the
//! `search_path`; every other parameter (`TimeZone`, `DateStyle`,
//! `client_encoding`, `IntervalStyle`, `standard_conforming_strings`,
//! dotted custom settings, the rest of `options`) is dropped, whatever the
//! `named_prepared_statements` flag. The backend's `application_name` is
//! `Supavisor`; in session mode, Supavisor's main branch (after 2.9.10) sets
//! it to `Supavisor - <the client's>` once the client holds its backend.
//! The stage sends PgBouncer the same parameters; `search_path` goes on top
//! level, where PgBouncer takes it.

use crate::stage::wire::cstr;

/// Supavisor's pool mode, for the parameters its backends get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PoolMode {
    /// Port 6543: backends shared between clients, named `Supavisor`.
    Transaction,
    /// Port 5432: a backend per client, named after it.
    Session,
}

/// The application name Supavisor's backends carry in every mode.
pub(crate) const SUPAVISOR_APPLICATION_NAME: &str = "Supavisor";

/// The StartupMessage `packet` (length and protocol version included) as
/// Supavisor would open a backend for it in `mode`. `None` when it is not a
/// list of NUL-terminated pairs: it is sent on as it is, for PgBouncer to
/// refuse.
pub(crate) fn rewrite(packet: &[u8], mode: PoolMode) -> Option<Vec<u8>> {
    let version = packet.get(4..8)?;
    let params = params(packet)?;
    let get = |wanted: &[u8]| {
        params
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| *value)
    };
    let user = get(b"user")?;
    let search_path = get(b"search_path")
        .map(<[u8]>::to_vec)
        .or_else(|| get(b"options").and_then(|o| option(o, b"search_path")));
    let application_name = match (mode, get(b"application_name")) {
        (PoolMode::Session, Some(name)) if !name.is_empty() => {
            let mut named = format!("{SUPAVISOR_APPLICATION_NAME} - ").into_bytes();
            named.extend_from_slice(name);
            named
        }
        _ => SUPAVISOR_APPLICATION_NAME.as_bytes().to_vec(),
    };
    let mut kept: Vec<(&[u8], &[u8])> = vec![(b"user", user)];
    if let Some(database) = get(b"database") {
        kept.push((b"database", database));
    }
    kept.push((b"application_name", &application_name));
    if let Some(search_path) = &search_path {
        kept.push((b"search_path", search_path));
    }
    let mut out = vec![0, 0, 0, 0];
    out.extend_from_slice(version);
    for (name, value) in kept {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out.push(0);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// The `(name, value)` pairs of StartupMessage `packet`; `None` when it
/// is not a list of NUL-terminated pairs ended by a NUL.
fn params(packet: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut rest = packet.get(8..)?;
    let mut params = Vec::new();
    while rest != [0] {
        let (name, after) = cstr(rest)?;
        let (value, after) = cstr(after)?;
        params.push((name, value));
        rest = after;
    }
    Some(params)
}

/// The value of top-level parameter `wanted` in StartupMessage `packet`,
/// if it is well formed.
fn value<'a>(packet: &'a [u8], wanted: &[u8]) -> Option<&'a [u8]> {
    let params = params(packet)?;
    params
        .into_iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| value)
}

/// The `user` StartupMessage `packet` names, if it is well formed.
pub(crate) fn user(packet: &[u8]) -> Option<String> {
    Some(String::from_utf8_lossy(value(packet, b"user")?).into_owned())
}

/// Whether a StartupMessage as [`rewrite`] sends it on names a
/// `search_path` (Supavisor opens such a pool's backends with it).
pub(crate) fn names_search_path(packet: &[u8]) -> bool {
    value(packet, b"search_path").is_some()
}

/// Supavisor's pool of a StartupMessage: its user, database and
/// `search_path` (not the application name, which Supavisor's session
/// mode puts in each backend's own).
pub(crate) fn pool_of(packet: &[u8]) -> Vec<u8> {
    let mut pool = Vec::new();
    for name in [&b"user"[..], b"database", b"search_path"] {
        pool.extend_from_slice(value(packet, name).unwrap_or_default());
        pool.push(0);
    }
    pool
}

/// The value of setting `wanted` in an `options` string, as Supavisor's
/// `StartupOptions.parse` reads it: whitespace-separated words (a
/// backslash escapes the next character), `-c name=value` or
/// `--name=value`, the last one winning.
fn option(options: &[u8], wanted: &[u8]) -> Option<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut word: Option<Vec<u8>> = None;
    let mut bytes = options.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                let w = word.get_or_insert_with(Vec::new);
                w.extend(bytes.next());
            }
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => words.extend(word.take()),
            _ => word.get_or_insert_with(Vec::new).push(b),
        }
    }
    words.extend(word);
    let mut found = None;
    let mut at = 0;
    while at < words.len() {
        let pair = if words[at] == b"-c" {
            at += 1;
            words.get(at).map(Vec::as_slice)
        } else {
            words[at].strip_prefix(b"--")
        };
        at += 1;
        let Some(pair) = pair else { continue };
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            continue;
        };
        if &pair[..eq] == wanted {
            found = Some(pair[eq + 1..].to_vec());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 0, 0, 3, 0, 0];
        for (k, v) in params {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out.push(0);
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    #[test]
    fn a_pool_is_its_user_database_and_search_path() {
        let named = |app: &str, path: Option<&str>| {
            let mut params = vec![("user", "postgres"), ("database", "app")];
            params.push(("application_name", app));
            params.extend(path.map(|p| ("options", p)));
            let sent = rewrite(&startup(&params), PoolMode::Session).unwrap();
            (names_search_path(&sent), pool_of(&sent))
        };
        let (with, pool) = named("a", Some("-c search_path=app"));
        assert!(with);
        assert_eq!(pool, b"postgres\0app\0app\0");
        // The application name (in each session backend's own) is not the pool's.
        assert_eq!(named("b", Some("-c search_path=app")).1, pool);
        let (without, other) = named("a", None);
        assert!(!without);
        assert_ne!(other, pool);
    }

    #[test]
    fn only_supavisors_parameters_are_sent_on() {
        let sqlx = startup(&[
            ("user", "postgres"),
            ("database", "app"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "2"),
            ("application_name", "my-app"),
            (
                "options",
                "-c app.tenant=t1 -c search_path=app,\\ public -c jit=off",
            ),
        ]);
        let expected = startup(&[
            ("user", "postgres"),
            ("database", "app"),
            ("application_name", "Supavisor"),
            ("search_path", "app, public"),
        ]);
        assert_eq!(rewrite(&sqlx, PoolMode::Transaction), Some(expected));
        let session = startup(&[
            ("user", "postgres"),
            ("database", "app"),
            ("application_name", "Supavisor - my-app"),
            ("search_path", "app, public"),
        ]);
        assert_eq!(rewrite(&sqlx, PoolMode::Session), Some(session));
        assert_eq!(user(&sqlx).as_deref(), Some("postgres"));
    }

    #[test]
    fn a_top_level_search_path_wins_over_options() {
        let p = startup(&[
            ("user", "u"),
            ("search_path", "top"),
            ("options", "--search_path=opt"),
        ]);
        let expected = startup(&[
            ("user", "u"),
            ("application_name", "Supavisor"),
            ("search_path", "top"),
        ]);
        assert_eq!(rewrite(&p, PoolMode::Session), Some(expected));
        assert_eq!(
            option(b"--search_path=a -c search_path=b", b"search_path"),
            Some(b"b".to_vec())
        );
        assert_eq!(option(b"-csearch_path=a", b"search_path"), None);
    }

    #[test]
    fn a_malformed_packet_is_left_alone() {
        assert_eq!(
            rewrite(&[0, 0, 0, 9, 0, 3, 0, 0, b'u'], PoolMode::Transaction),
            None
        );
        assert_eq!(
            rewrite(&startup(&[("database", "d")]), PoolMode::Transaction),
            None
        );
    }
}
