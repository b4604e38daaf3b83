//! The one place that turns names and values into SQL text. Everything the extension sends to
//! PostgreSQL is assembled from these, never by pasting user strings.

/// `"name"` with embedded double quotes doubled: safe for any identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `'text'` with embedded single quotes doubled (standard_conforming_strings is on by default
/// since PostgreSQL 9.1, so backslashes are literal).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Parses one complete standard SQL string literal (`'it''s'`) and returns its value, or `None`
/// when `text` is anything else (several literals, an unterminated one, trailing text).
pub fn parse_literal(text: &str) -> Option<String> {
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            // Inside the literal a quote must be doubled.
            if chars.next() != Some('\'') {
                return None;
            }
        }
        value.push(c);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("lab", "#rig"), "\"lab\".\"#rig\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn literals_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(parse_literal("'it''s'").as_deref(), Some("it's"));
        assert_eq!(parse_literal("''").as_deref(), Some(""));
        assert_eq!(parse_literal("'a' || 'b'"), None);
        assert_eq!(parse_literal("'a'b'"), None);
        assert_eq!(parse_literal("'abc"), None);
        assert_eq!(parse_literal("'"), None);
        for v in ["", "x", "it's", "''", "a'b'c"] {
            assert_eq!(parse_literal(&literal(v)).as_deref(), Some(v));
        }
    }
}
