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

/// A string literal that means `text` whatever the session's `standard_conforming_strings`: `'…'`
/// with quotes doubled, or, when the text has a backslash, `E'…'` with backslashes doubled too
/// (as PostgreSQL's own quote_literal does).
pub fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
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

/// Splits `a.b.c` into its parts; parts may be double-quoted (`"lab"."#rig"`).
pub fn split_name(name: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = name.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
            part = part.trim().to_string();
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("lab", "#rig"), "\"lab\".\"#rig\"");
        assert_eq!(literal("it's"), "'it''s'");
        // Safe with standard_conforming_strings off: a backslash cannot escape the closing quote.
        assert_eq!(literal("a\\'b"), "E'a\\\\''b'");
        assert_eq!(literal("x\\"), "E'x\\\\'");
    }

    #[test]
    fn literals_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(parse_literal("'it''s'").as_deref(), Some("it's"));
        assert_eq!(parse_literal("''").as_deref(), Some(""));
        assert_eq!(parse_literal("'a' || 'b'"), None);
        assert_eq!(parse_literal("'a'b'"), None);
        assert_eq!(parse_literal("'abc"), None);
        assert_eq!(parse_literal("'"), None);
        for v in ["", "x", "it's", "''", "a'b'c", "no\\backslash"] {
            if v.contains('\\') {
                continue; // E-strings are not standard literals
            }
            assert_eq!(parse_literal(&literal(v)).as_deref(), Some(v));
        }
    }
}
