//! Schema-addressed objects (`<object@store>`, `<npy@store>`), where datajoint-python 2.3.5 puts
//! them (`storage.build_object_path`):
//! `{schema_prefix}/[{k=v partition attributes}/]{schema}/{table}/{k=v for the rest of the primary
//! key}/{field}_{token}{ext}`, primary-key values encoded as its `encode_pk_value` does. Unlike
//! hash-addressed objects these are not shared: each write has its own random token.

use md5::{Digest, Md5};

use super::address::check_segment;
use super::spec::Spec;
use super::StoreError;

/// The characters of a token (datajoint-python's `TOKEN_ALPHABET`: URL-safe base64's).
const TOKEN_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A token of `length` characters (clamped to 4..=16, as datajoint-python does) from random
/// bytes (one per character; 256 is a multiple of 64, so each character is uniform).
pub fn token(random: &[u8], length: usize) -> String {
    let n = length.clamp(4, 16);
    assert!(random.len() >= n, "a token needs {n} random bytes");
    random[..n].iter().map(|b| TOKEN_ALPHABET[(*b % 64) as usize] as char).collect()
}

/// One primary-key value, as the host read it from the row's key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    /// An integer or a decimal, as written (`str()` of Python's int).
    Number(String),
    /// Text or a UUID.
    Text(String),
    /// A timestamp as `YYYY-MM-DD HH:MM:SS[.ffffff]` (or with a `T`).
    DateTime(String),
    /// A date or a time of day, written as its `isoformat()` (never escaped).
    Iso(String),
    Bool(bool),
}

/// datajoint-python's `encode_pk_value`: numbers as written, timestamps as
/// `%Y-%m-%dT%H-%M-%S`, text as is unless it holds one of `/\:*?"<>|` or is longer than 100
/// characters: then cut to 50 characters, `_` and 8 hex digits of its MD5 (when long), and
/// percent-encoded.
pub fn encode_key_value(value: &KeyValue) -> String {
    match value {
        KeyValue::Number(n) | KeyValue::Iso(n) => n.clone(),
        KeyValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        KeyValue::DateTime(t) => {
            // Seconds precision, dashes for colons, a T between date and time.
            let t = t.split('.').next().unwrap_or(t);
            let (date, time) = t.split_once([' ', 'T']).unwrap_or((t, "00:00:00"));
            format!("{date}T{}", time.replace(':', "-"))
        }
        KeyValue::Text(s) => {
            let long = s.chars().count() > 100;
            if !long && !s.chars().any(|c| "/\\:*?\"<>|".contains(c)) {
                return s.clone();
            }
            let cut = if long {
                let digest = Md5::digest(s.as_bytes());
                let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
                format!("{}_{hex}", s.chars().take(50).collect::<String>())
            } else {
                s.clone()
            };
            percent_encode(&cut)
        }
    }
}

/// Python's `urllib.parse.quote(s, safe="")`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a schema-addressed object goes: `key` is the primary key in the table's order, `ext`
/// the file's extension with its dot (`.npy`), `token` from [`token`]. Every segment is checked
/// to stay inside the store (a key value of `..` is `k=..`, but a schema or field name is
/// refused if it could escape).
pub fn object_path(
    spec: &Spec,
    schema: &str,
    table: &str,
    field: &str,
    key: &[(String, KeyValue)],
    ext: Option<&str>,
    token: &str,
) -> Result<String, StoreError> {
    let partition: Vec<&str> = spec.partition_pattern.as_deref().map(pattern_attributes).unwrap_or_default();
    let mut parts: Vec<String> = Vec::new();
    let prefix = spec.schema_prefix.trim_matches('/');
    if !prefix.is_empty() {
        parts.push(prefix.to_string());
    }
    for attr in &partition {
        if let Some((name, v)) = key.iter().find(|(k, _)| k == attr) {
            parts.push(format!("{name}={}", encode_key_value(v)));
        }
    }
    parts.push(schema.to_string());
    parts.push(table.to_string());
    for (name, v) in key {
        if !partition.contains(&name.as_str()) {
            parts.push(format!("{name}={}", encode_key_value(v)));
        }
    }
    let ext = match ext {
        Some(e) if !e.is_empty() => {
            if e.starts_with('.') {
                e.to_string()
            } else {
                format!(".{e}")
            }
        }
        _ => String::new(),
    };
    parts.push(format!("{field}_{token}{ext}"));
    for p in &parts[usize::from(!prefix.is_empty())..] {
        check_segment(p)?;
    }
    Ok(parts.join("/"))
}

/// The `{attr}` names of a partition pattern, in order.
fn pattern_attributes(pattern: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            out.push(name);
        }
        rest = &after[close + 1..];
    }
    out
}

/// A file's extension as Python's `Path.suffix` gives it (`.gz` of `a.tar.gz`; none for
/// `.bashrc` or `name.`).
pub fn suffix(filename: &str) -> Option<&str> {
    let name = filename.rsplit('/').next().unwrap_or(filename);
    let dot = name.rfind('.')?;
    if dot == 0 || dot == name.len() - 1 {
        return None;
    }
    Some(&name[dot..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> Spec {
        let mut j = json!({"protocol": "file", "location": "/tmp/x"});
        j.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Spec::parse(&j).unwrap().0
    }

    #[test]
    fn paths_as_datajoint_python_builds_them() {
        // Verified against 2.3.5: `_schema/lab/__t/id=1/arr_CUUdQoJF.npy`.
        let key = vec![("id".to_string(), KeyValue::Number("1".into()))];
        assert_eq!(
            object_path(&spec(json!({})), "lab", "__t", "arr", &key, Some(".npy"), "CUUdQoJF").unwrap(),
            "_schema/lab/__t/id=1/arr_CUUdQoJF.npy"
        );
        let key = vec![
            ("subject".to_string(), KeyValue::Text("m1".into())),
            ("session".to_string(), KeyValue::DateTime("2024-05-06 07:08:09.5".into())),
        ];
        let s = spec(json!({"partition_pattern": "{session}", "schema_prefix": "objs/"}));
        assert_eq!(
            object_path(&s, "lab", "scan", "movie", &key, Some("zarr"), "abcd").unwrap(),
            "objs/session=2024-05-06T07-08-09/lab/scan/subject=m1/movie_abcd.zarr"
        );
        assert_eq!(object_path(&s, "lab", "scan", "f", &[], None, "abcd").unwrap(), "objs/lab/scan/f_abcd");
        assert!(object_path(&s, "..", "scan", "f", &[], None, "abcd").is_err());
        assert!(object_path(&s, "lab", "scan", "f\n", &[], None, "abcd").is_err());
    }

    #[test]
    fn key_values_encode_as_datajoint_python_encodes_them() {
        // Values from Python's encode_pk_value (2.3.5).
        assert_eq!(encode_key_value(&KeyValue::Text("plain text".into())), "plain text");
        assert_eq!(encode_key_value(&KeyValue::Text("a/b:c".into())), "a%2Fb%3Ac");
        assert_eq!(encode_key_value(&KeyValue::Text("..".into())), "..");
        assert_eq!(encode_key_value(&KeyValue::Text("é?".into())), "%C3%A9%3F");
        let long = "x".repeat(120);
        // hashlib.md5(("x" * 120).encode()).hexdigest()[:8]
        let digest: String =
            Md5::digest(long.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
        assert_eq!(encode_key_value(&KeyValue::Text(long)), format!("{}_{digest}", "x".repeat(50)));
        assert_eq!(
            encode_key_value(&KeyValue::DateTime("2024-01-02T03:04:05".into())),
            "2024-01-02T03-04-05"
        );
        assert_eq!(encode_key_value(&KeyValue::Bool(true)), "True");
        assert_eq!(encode_key_value(&KeyValue::Iso("07:08:09".into())), "07:08:09");
        assert_eq!(encode_key_value(&KeyValue::Number("-7".into())), "-7");
    }

    #[test]
    fn tokens_and_suffixes() {
        let t = token(&[0, 1, 63, 64, 255, 26, 52, 62, 9, 9], 8);
        assert_eq!(t, "AB_A_a0-");
        assert_eq!(token(&[0; 16], 40).len(), 16);
        assert_eq!(token(&[0; 16], 1).len(), 4);
        assert_eq!(suffix("a.tar.gz"), Some(".gz"));
        assert_eq!(suffix(".bashrc"), None);
        assert_eq!(suffix("name."), None);
        assert_eq!(suffix("data"), None);
    }
}
