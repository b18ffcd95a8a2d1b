//! The crate's one way to put a name or a value into SQL text: admin
//! statements run on the simple protocol (one round trip, safe through a
//! transaction pooler), so their values are quoted, never interpolated.

/// Quotes an SQL identifier (a database, schema or role name).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is on).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
