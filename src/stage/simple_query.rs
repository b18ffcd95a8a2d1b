//! Which top-level statements a simple Query message holds, as far as the
//! stage must know: whether one of them is `PREPARE`, `EXECUTE` or
//! `DEALLOCATE` (Supavisor asks its SQL parser for the statement types and
//! refuses those three in transaction mode). A lexer, not a parser: it
//! splits on the `;` outside strings, quoted names, dollar quotes and
//! comments, and reads each statement's first word.

/// Whether `sql` has a top-level `PREPARE`, `EXECUTE` or `DEALLOCATE`.
pub(crate) fn uses_sql_prepared_statements(sql: &[u8]) -> bool {
    let mut at = 0;
    loop {
        at = skip_blank(sql, at);
        if at >= sql.len() {
            return false;
        }
        let word_end = at
            + sql[at..]
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
        let word = &sql[at..word_end];
        if [&b"prepare"[..], b"execute", b"deallocate"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
        {
            return true;
        }
        at = statement_end(sql, word_end.max(at + 1));
    }
}

/// The first byte at or after `at` that is neither white space, a `;`
/// nor inside a comment.
fn skip_blank(sql: &[u8], mut at: usize) -> usize {
    while at < sql.len() {
        match sql[at] {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b';' | 0 => at += 1,
            b'-' if sql.get(at + 1) == Some(&b'-') => at = line_comment_end(sql, at),
            b'/' if sql.get(at + 1) == Some(&b'*') => at = block_comment_end(sql, at),
            _ => break,
        }
    }
    at
}

/// The index just past the `;` that ends the statement `at` is in (or the end).
fn statement_end(sql: &[u8], mut at: usize) -> usize {
    while at < sql.len() {
        at = match sql[at] {
            b';' => return at + 1,
            b'\'' => quoted_end(sql, at + 1, b'\'', false),
            b'"' => quoted_end(sql, at + 1, b'"', false),
            b'e' | b'E' if sql.get(at + 1) == Some(&b'\'') && !word_byte(sql, at) => {
                quoted_end(sql, at + 2, b'\'', true)
            }
            b'$' if !word_byte(sql, at) => dollar_quoted_end(sql, at),
            b'-' if sql.get(at + 1) == Some(&b'-') => line_comment_end(sql, at),
            b'/' if sql.get(at + 1) == Some(&b'*') => block_comment_end(sql, at),
            _ => at + 1,
        };
    }
    at
}

/// Whether the byte before `at` belongs to a word (so `at` does not start a token).
fn word_byte(sql: &[u8], at: usize) -> bool {
    at > 0 && (sql[at - 1].is_ascii_alphanumeric() || sql[at - 1] == b'_' || sql[at - 1] == b'$')
}

/// Past the closing `quote` of a string or name whose body starts at `at`
/// (a doubled quote is one quote; `backslashes`: `E'...'`, where `\` escapes).
fn quoted_end(sql: &[u8], mut at: usize, quote: u8, backslashes: bool) -> usize {
    while at < sql.len() {
        match sql[at] {
            b'\\' if backslashes => at += 2,
            b if b == quote && sql.get(at + 1) == Some(&quote) => at += 2,
            b if b == quote => return at + 1,
            _ => at += 1,
        }
    }
    sql.len()
}

/// Past a `$tag$ ... $tag$` string starting at `at`; a `$` that opens no
/// such string (a parameter `$1`) is one byte.
fn dollar_quoted_end(sql: &[u8], at: usize) -> usize {
    let tag_len = sql[at + 1..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b >= 0x80)
        .count();
    let close = at + 1 + tag_len;
    if sql.get(close) != Some(&b'$') || sql.get(at + 1).is_some_and(u8::is_ascii_digit) {
        return at + 1;
    }
    let tag = &sql[at..=close];
    let body = close + 1;
    match sql[body..].windows(tag.len()).position(|w| w == tag) {
        Some(p) => body + p + tag.len(),
        None => sql.len(),
    }
}

fn line_comment_end(sql: &[u8], at: usize) -> usize {
    match sql[at..].iter().position(|b| *b == b'\n') {
        Some(p) => at + p + 1,
        None => sql.len(),
    }
}

/// Past a `/* ... */` comment (nested, as PostgreSQL's are).
fn block_comment_end(sql: &[u8], mut at: usize) -> usize {
    let mut depth = 0usize;
    while at < sql.len() {
        if sql[at..].starts_with(b"/*") {
            depth += 1;
            at += 2;
        } else if sql[at..].starts_with(b"*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else {
            at += 1;
        }
    }
    sql.len()
}

#[cfg(test)]
mod tests {
    use super::uses_sql_prepared_statements as refused;

    #[test]
    fn prepare_execute_and_deallocate_are_found_at_the_top_level_only() {
        for sql in [
            "PREPARE p AS SELECT 1",
            "  execute p",
            "deallocate all",
            "select 1; prepare p(int) as select $1",
            "-- note\nEXECUTE p",
            "/* a /* nested */ comment */ Deallocate p",
            "select ';'; execute p",
            "select $$;$$; execute p",
            "select E'\\';'; execute p",
        ] {
            assert!(refused(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "select 1",
            "select 'prepare'",
            "select \"execute\" from t",
            "do $body$ begin execute 'select 1'; end $body$",
            "explain execute p",
            "select 1 -- ; execute p",
            "select /* ; execute p */ 1",
            "select $1::text; select preparedness from t",
            "",
            ";;",
        ] {
            assert!(!refused(sql.as_bytes()), "{sql}");
        }
    }
}
