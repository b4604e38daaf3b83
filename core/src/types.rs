//! Attribute types of the definition language and the PostgreSQL types they declare, as
//! datajoint-python 2.3.5 maps them on PostgreSQL: core types (`int32`, `datetime(3)`, `enum(...)`),
//! codecs (`<blob>`, `<object@store>`) and native PostgreSQL types (accepted with a notice).

use md5::{Digest, Md5};

use crate::sql;

/// A parsed attribute type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeType {
    /// A DataJoint core type; `declared` is the text as written (it goes into the column comment).
    Core { declared: String, sql_type: String, enumeration: Option<Enumeration> },
    /// A codec such as `<blob>` or `<object@store>`; `declared` is the text as written.
    Codec { declared: String, codec: Codec, store: Option<String> },
    /// A PostgreSQL type written as is; the extension says so with a NOTICE.
    Native { sql_type: String },
}

/// An enum's values, and the schema-level type datajoint-python names after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enumeration {
    pub values: Vec<String>,
    /// `enum_` and the first 8 hex digits of the md5 of the sorted values joined by `_`.
    pub type_name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Blob,
    Attach,
    Hash,
    Object,
    Npy,
    Filepath,
}

impl Codec {
    fn parse(name: &str) -> Option<Codec> {
        Some(match name {
            "blob" => Codec::Blob,
            "attach" => Codec::Attach,
            "hash" => Codec::Hash,
            "object" => Codec::Object,
            "npy" => Codec::Npy,
            "filepath" => Codec::Filepath,
            _ => return None,
        })
    }

    /// In-table storage is possible only for blobs and attachments.
    fn needs_store(self) -> bool {
        !matches!(self, Codec::Blob | Codec::Attach)
    }
}

/// Why a type was refused; the definition parser adds the line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeError {
    pub message: String,
    pub hint: String,
}

fn refuse(message: String, hint: &str) -> TypeError {
    TypeError { message, hint: hint.to_string() }
}

const CORE_HINT: &str =
    "Core types are int8, int16, int32, int64, float32, float64, bool, uuid, json, bytes, \
                         date, datetime(n), char(n), varchar(n), enum('a', 'b'), decimal(p, s); \
                         codecs <blob>, <attach>, <blob@store>, <attach@store>, <object@store>, \
                         <npy@store>, <filepath@store>, <hash@store>.";

impl AttributeType {
    /// Parses a type as written in a definition (already trimmed).
    pub fn parse(text: &str) -> Result<AttributeType, TypeError> {
        let text = text.trim();
        if text.starts_with('<') {
            return parse_codec(text);
        }
        if let Some(core) = parse_core(text)? {
            return Ok(core);
        }
        parse_native(text)
    }

    /// The column type in CREATE TABLE. Enum types are qualified with `schema`.
    pub fn sql_type(&self, schema: &str) -> String {
        match self {
            AttributeType::Core { enumeration: Some(e), .. } => sql::qualified(schema, &e.type_name),
            AttributeType::Core { sql_type, .. } | AttributeType::Native { sql_type } => sql_type.clone(),
            AttributeType::Codec { codec, store, .. } => {
                if store.is_none() && !codec.needs_store() {
                    "bytea".into()
                } else {
                    "jsonb".into()
                }
            }
        }
    }

    /// The `:type:` prefix of the column comment, which tells DataJoint clients the declared type.
    /// Native types have none.
    pub fn comment_prefix(&self) -> Option<String> {
        match self {
            AttributeType::Core { declared, .. } | AttributeType::Codec { declared, .. } => {
                Some(format!(":{declared}:"))
            }
            AttributeType::Native { .. } => None,
        }
    }
}

fn parse_codec(text: &str) -> Result<AttributeType, TypeError> {
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or_else(|| refuse(format!("codec type {text} is not closed by '>'"), CORE_HINT))?;
    let (name, store) = match inner.split_once('@') {
        Some((name, store)) => (name.trim(), Some(store.trim().to_string())),
        None => (inner.trim(), None),
    };
    let codec =
        Codec::parse(name).ok_or_else(|| refuse(format!("codec <{name}> is not known"), CORE_HINT))?;
    if codec.needs_store() && store.is_none() {
        return Err(refuse(
            format!("<{name}> keeps its data in an object store and needs @: <{name}@store>"),
            "Name the store after @, or write <name@> for the default store.",
        ));
    }
    if let Some(s) = &store {
        if !s.is_empty() && !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(refuse(
                format!("store name \"{s}\" is not a plain name"),
                "Store names use letters, digits, '_' and '-'.",
            ));
        }
    }
    Ok(AttributeType::Codec { declared: text.to_string(), codec, store })
}

/// The core types, matched the way datajoint-python classifies them (case-insensitively, spaces
/// allowed before '('), then mapped only when spelt as it maps them (lowercase, `char(`...).
fn parse_core(text: &str) -> Result<Option<AttributeType>, TypeError> {
    let lower = text.to_ascii_lowercase();
    let simple = match lower.as_str() {
        "int64" => Some("bigint"),
        "int32" => Some("integer"),
        "int16" | "int8" => Some("smallint"),
        "float32" => Some("real"),
        "float64" => Some("double precision"),
        "bool" => Some("boolean"),
        "uuid" => Some("uuid"),
        "json" => Some("jsonb"),
        "bytes" => Some("bytea"),
        "date" => Some("date"),
        _ => None,
    };
    let core = |sql_type: String, enumeration| {
        Ok(Some(AttributeType::Core { declared: text.to_string(), sql_type, enumeration }))
    };
    let misspelt = || {
        Err(refuse(
            format!("type {text} is spelt like a core type but is not one"),
            "Core type names are lowercase, with no space before '(': int32, varchar(64), datetime(3).",
        ))
    };
    if let Some(sql_type) = simple {
        return if lower == text { core(sql_type.to_string(), None) } else { misspelt() };
    }
    if let Some(args) = call_args(&lower, "datetime") {
        let precision = match args {
            None => None,
            Some(a) => Some(a.trim().parse::<u8>().ok().filter(|p| *p <= 6).ok_or_else(|| {
                refuse(
                    format!("datetime precision in {text} must be 0 to 6"),
                    "Write datetime(0) to datetime(6).",
                )
            })?),
        };
        if !text.starts_with("datetime") {
            return misspelt();
        }
        return core(precision.map_or("timestamp".into(), |p| format!("timestamp({p})")), None);
    }
    for (name, sql_name) in [("char", "char"), ("varchar", "varchar")] {
        if let Some(Some(args)) = call_args(&lower, name) {
            let n: u32 = args.trim().parse().map_err(|_| {
                refuse(
                    format!("{name} length in {text} must be a positive integer"),
                    "Write e.g. varchar(64).",
                )
            })?;
            if !text.starts_with(&format!("{name}(")) {
                return misspelt();
            }
            if n == 0 || n > 10_485_760 {
                return Err(refuse(
                    format!("{name} length {n} is out of range"),
                    "Use a length from 1 to 10485760.",
                ));
            }
            return core(format!("{sql_name}({n})"), None);
        }
    }
    if let Some(Some(args)) = call_args(&lower, "decimal") {
        let parts: Vec<&str> = args.split(',').map(str::trim).collect();
        let (p, s) = match parts.as_slice() {
            [p, s] => (p.parse::<u32>().ok(), s.parse::<u32>().ok()),
            _ => (None, None),
        };
        let (Some(p), Some(s)) = (p, s) else {
            return Err(refuse(
                format!("decimal in {text} needs precision and scale"),
                "Write decimal(10, 2).",
            ));
        };
        if !text.starts_with("decimal(") {
            return misspelt();
        }
        if p == 0 || p > 1000 || s > p {
            return Err(refuse(
                format!("decimal({p}, {s}) is out of range"),
                "Precision is 1 to 1000 and scale at most the precision.",
            ));
        }
        // datajoint-python keeps the spacing the user wrote: decimal(10, 2) → numeric(10, 2).
        return core(format!("numeric{}", &text["decimal".len()..]), None);
    }
    if let Some(Some(args)) = call_args(&lower, "enum") {
        if !text.starts_with("enum(") {
            return misspelt();
        }
        let values = enum_values(&text[5..5 + args.len()])?;
        let enumeration = Enumeration { type_name: enum_type_name(&values), values };
        return core(String::new(), Some(enumeration));
    }
    Ok(None)
}

/// For `name(args)` (spaces allowed before '('), `Some(Some(args))`; for a bare `name`,
/// `Some(None)`; otherwise `None`.
fn call_args<'a>(lower: &'a str, name: &str) -> Option<Option<&'a str>> {
    let rest = lower.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(None);
    }
    let args = rest.trim_start().strip_prefix('(')?.strip_suffix(')')?;
    Some(Some(args))
}

/// The values of `enum('a', "b")`. datajoint-python splits on every comma and strips quotes at the
/// ends, then hashes the result; values containing quotes or commas would hash differently from
/// what a reader expects, so they are refused.
fn enum_values(args: &str) -> Result<Vec<String>, TypeError> {
    let mut values = Vec::new();
    for piece in args.split(',') {
        let piece = piece.trim();
        let value = piece.trim_matches(|c| c == '\'' || c == '"');
        let quoted = piece.len() >= 2
            && ((piece.starts_with('\'') && piece.ends_with('\''))
                || (piece.starts_with('"') && piece.ends_with('"')));
        if !quoted || value.contains(['\'', '"']) {
            return Err(refuse(
                format!("enum value {piece} is not a quoted string"),
                "Write enum('a', 'b'): each value in quotes, without quotes or commas inside.",
            ));
        }
        values.push(value.to_string());
    }
    if values.iter().any(String::is_empty) {
        return Err(refuse("enum values must not be empty".into(), "Write enum('a', 'b')."));
    }
    Ok(values)
}

/// `enum_` and the first 8 hex digits of md5 of the values sorted by code point and joined by `_`.
pub fn enum_type_name(values: &[String]) -> String {
    let mut sorted: Vec<&str> = values.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let digest = Md5::digest(sorted.join("_").as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("enum_{hex}")
}

/// A native type is passed to PostgreSQL as written, so it is held to a grammar that cannot carry
/// anything but a type: words, one optional list of integer modifiers, more words, `[]`.
fn parse_native(text: &str) -> Result<AttributeType, TypeError> {
    let unsupported = || {
        refuse(
            format!("unsupported attribute type {text}"),
            &format!("{CORE_HINT} PostgreSQL types such as text or double precision are accepted too."),
        )
    };
    let (head, array) = match text.strip_suffix("[]") {
        Some(h) => (h.trim_end(), true),
        None => (text, false),
    };
    let (before, modifiers, after) = match head.find('(') {
        Some(open) => {
            let close = head.find(')').filter(|&c| c > open).ok_or_else(unsupported)?;
            (&head[..open], Some(&head[open + 1..close]), &head[close + 1..])
        }
        None => (head, None, ""),
    };
    let words_ok = |s: &str| {
        s.split_whitespace().all(|w| {
            w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    if before.trim().is_empty() || !words_ok(before) || !words_ok(after) {
        return Err(unsupported());
    }
    if let Some(m) = modifiers {
        if !m.split(',').all(|n| !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_digit())) {
            return Err(unsupported());
        }
    }
    let mut sql_type = before.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(m) = modifiers {
        sql_type.push('(');
        sql_type.push_str(&m.split(',').map(str::trim).collect::<Vec<_>>().join(","));
        sql_type.push(')');
    }
    if !after.trim().is_empty() {
        sql_type.push(' ');
        sql_type.push_str(&after.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    if array {
        sql_type.push_str("[]");
    }
    Ok(AttributeType::Native { sql_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(text: &str) -> String {
        AttributeType::parse(text).unwrap().sql_type("lab")
    }

    #[test]
    fn core_types_map_as_datajoint_python_maps_them() {
        for (t, pg) in [
            ("int64", "bigint"),
            ("int32", "integer"),
            ("int16", "smallint"),
            ("int8", "smallint"),
            ("float32", "real"),
            ("float64", "double precision"),
            ("bool", "boolean"),
            ("uuid", "uuid"),
            ("json", "jsonb"),
            ("bytes", "bytea"),
            ("date", "date"),
            ("datetime", "timestamp"),
            ("datetime(3)", "timestamp(3)"),
            ("datetime (3)", "timestamp(3)"),
            ("char(3)", "char(3)"),
            ("varchar(64)", "varchar(64)"),
            ("decimal(10,2)", "numeric(10,2)"),
            ("decimal(10, 2)", "numeric(10, 2)"),
            ("enum('M', 'F', 'U')", "\"lab\".\"enum_e54fc739\""),
        ] {
            assert_eq!(sql(t), pg, "{t}");
        }
        let t = AttributeType::parse("enum('M', 'F', 'U')").unwrap();
        assert_eq!(t.comment_prefix().as_deref(), Some(":enum('M', 'F', 'U'):"));
    }

    #[test]
    fn enum_names_match_datajoint_python() {
        let names = |v: &[&str]| enum_type_name(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(names(&["a", "b"]), "enum_dbf08e00");
        assert_eq!(names(&["M", "F", "U"]), "enum_e54fc739");
        assert_eq!(names(&["a", "b", "c"]), "enum_8d28cddc");
        assert_eq!(names(&["pending", "reserved", "success", "error", "ignore"]), "enum_609a743e");
    }

    #[test]
    fn codecs() {
        assert_eq!(sql("<blob>"), "bytea");
        assert_eq!(sql("<attach>"), "bytea");
        assert_eq!(sql("<blob@raw>"), "jsonb");
        assert_eq!(sql("<blob@>"), "jsonb");
        assert_eq!(sql("<object@s3>"), "jsonb");
        assert_eq!(sql("< blob @ store >"), "jsonb");
        assert_eq!(AttributeType::parse("<blob@s>").unwrap().comment_prefix().as_deref(), Some(":<blob@s>:"));
        assert!(AttributeType::parse("<object>").unwrap_err().message.contains("needs @"));
        assert!(AttributeType::parse("<BLOB>").unwrap_err().message.contains("not known"));
        assert!(AttributeType::parse("<blob@a'b>").is_err());
    }

    #[test]
    fn native_types_pass_only_as_types() {
        assert_eq!(sql("text"), "text");
        assert_eq!(sql("double precision"), "double precision");
        assert_eq!(sql("timestamp(3) with time zone"), "timestamp(3) with time zone");
        assert_eq!(sql("numeric( 10 , 2 )"), "numeric(10,2)");
        assert_eq!(sql("int[]"), "int[]");
        assert_eq!(sql("jsonb"), "jsonb");
        assert!(matches!(AttributeType::parse("text").unwrap(), AttributeType::Native { .. }));
        for bad in
            ["int) ; drop table x; --", "varchar(1) default 'x'", "a-b", "int(x)", "", "(3)", "\"text\""]
        {
            assert!(AttributeType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn misspelt_core_types_are_refused_with_a_hint() {
        for bad in ["INT32", "Int32", "VARCHAR(10)", "Date", "char (3)", "decimal (3,1)", "ENUM('a')"] {
            let e = AttributeType::parse(bad).unwrap_err();
            assert!(e.message.contains("core type"), "{bad}: {e:?}");
        }
        assert!(AttributeType::parse("enum(a, b)").is_err());
        assert!(AttributeType::parse("enum('it''s')").is_err());
        assert!(AttributeType::parse("varchar(0)").is_err());
        assert!(AttributeType::parse("datetime(9)").is_err());
        assert!(AttributeType::parse("decimal(3)").is_err());
    }
}
