//! Helpers shared by the property tests.

/// The SQL text with the contents of '...' and "..." removed: what PostgreSQL reads as syntax.
pub fn outside_quotes(sql: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}
