//! The definition language, parsed as datajoint-python 2.3.5 reads it:
//!
//! ```text
//! # table comment
//! -> Parent                       # primary key from the parent's key
//! attr = default : type # comment
//! ---                             # the rest are secondary attributes
//! -> [nullable, unique] Other.proj(new_name='old_name')
//! index(a, b)
//! unique index(c)
//! ```
//!
//! Parsing is purely syntactic; resolving parents and compiling DDL happen in [`crate::declare`].

use std::fmt;

/// A parsed definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// The first line, when it starts with `#`, without the `#`.
    pub comment: String,
    pub lines: Vec<Line>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the definition text.
    pub number: usize,
    /// The line as written, trimmed, for error messages.
    pub text: String,
    /// Above the `---` separator: part of the primary key.
    pub in_key: bool,
    pub item: Item,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Attribute(Attribute),
    ForeignKey(ForeignKey),
    Index(Index),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    /// The default as written (`null`, `5`, `"text"`, `'text'`, `CURRENT_TIMESTAMP(3)`), if any.
    pub default: Option<String>,
    /// The type as written.
    pub type_text: String,
    /// 1-based column of the type, for errors about it.
    pub type_column: usize,
    pub comment: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignKey {
    pub nullable: bool,
    pub unique: bool,
    /// The parent as a dotted path: `Session`, `lab.Session`, `Master.Part`, `master`.
    pub parent: Vec<String>,
    /// `.proj(new='old', ...)` renames, in order.
    pub renames: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub unique: bool,
    pub columns: Vec<String>,
}

/// The class of a definition error; the extension maps each to a SQLSTATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 42601
    Syntax,
    /// 42704: an unknown type or codec
    UndefinedType,
    /// 42701
    DuplicateColumn,
    /// 42703
    UndefinedColumn,
    /// 42P01
    UndefinedTable,
    /// 42939: names reserved for DataJoint
    ReservedName,
    /// 42622
    NameTooLong,
    /// 42P16: a well-formed definition that breaks a DataJoint rule
    InvalidDefinition,
    /// 42P07
    DuplicateObject,
    /// 0A000
    NotSupported,
}

/// A definition error: what is wrong, where, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionError {
    pub kind: ErrorKind,
    pub message: String,
    /// 1-based line and column in the definition; 0 when the error is about the whole table.
    pub line: usize,
    pub column: usize,
    pub line_text: String,
    pub hint: String,
}

impl DefinitionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>, hint: impl Into<String>) -> Self {
        DefinitionError {
            kind,
            message: message.into(),
            line: 0,
            column: 0,
            line_text: String::new(),
            hint: hint.into(),
        }
    }

    pub fn at(mut self, line: usize, column: usize, line_text: &str) -> Self {
        self.line = line;
        self.column = column;
        self.line_text = line_text.to_string();
        self
    }

    /// `line 3, column 7: <text>` for the DETAIL of an error, or None for table-level errors.
    pub fn location(&self) -> Option<String> {
        (self.line > 0).then(|| format!("line {}, column {}: {}", self.line, self.column, self.line_text))
    }
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DefinitionError {}

/// Parses a definition. Errors carry the line and column of the offending text.
pub fn parse(text: &str) -> Result<Definition, DefinitionError> {
    let mut comment = String::new();
    let mut lines = Vec::new();
    let mut in_key = true;
    let mut first = true;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let col = |offset: usize| indent + offset + 1;
        let err = |kind, offset: usize, message: String, hint: &str| {
            Err(DefinitionError::new(kind, message, hint).at(number, col(offset), line))
        };
        if std::mem::take(&mut first) && line.starts_with('#') {
            comment = line[1..].trim().to_string();
            if comment.starts_with(':') {
                return err(
                    ErrorKind::Syntax,
                    1,
                    "the table comment must not start with a colon".into(),
                    "DataJoint reserves ':' at the start of comments for type information; reword the comment.",
                );
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with("---") {
            in_key = false;
            continue;
        }
        let item = if is_foreign_key(line) {
            Item::ForeignKey(parse_foreign_key(line).map_err(|(o, m, h)| {
                DefinitionError::new(ErrorKind::Syntax, m, h).at(number, col(o), line)
            })?)
        } else if let Some(index) = parse_index(line)
            .map_err(|(kind, o, m, h)| DefinitionError::new(kind, m, h).at(number, col(o), line))?
        {
            Item::Index(index)
        } else if line.starts_with('_') {
            return err(
                ErrorKind::ReservedName,
                0,
                format!("attribute name in \"{line}\" starts with an underscore"),
                "Names starting with _ are reserved for columns DataJoint manages (_singleton, _job_*); choose another name.",
            );
        } else {
            Item::Attribute(parse_attribute(line).map_err(|(o, m, h)| {
                DefinitionError::new(ErrorKind::Syntax, m, h).at(number, col(o), line)
            })?)
        };
        // The attribute parser counts columns within the trimmed line; report them in the text.
        let item = match item {
            Item::Attribute(mut a) => {
                a.type_column = col(a.type_column - 1);
                Item::Attribute(a)
            }
            other => other,
        };
        lines.push(Line { number, text: line.to_string(), in_key, item });
    }
    Ok(Definition { comment, lines })
}

type LineError = (usize, String, String);

/// datajoint-python's rule: a line with `->` where no quote or `#` comes before the arrow.
fn is_foreign_key(line: &str) -> bool {
    line.find("->").is_some_and(|at| !line[..at].contains(['"', '\'', '#']))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name [= default] : type [# comment]`
fn parse_attribute(line: &str) -> Result<Attribute, LineError> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err((
            0,
            format!("expected an attribute name at \"{line}\""),
            "Write name : type # comment.".into(),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err((
            0,
            format!("attribute name \"{name}\" must be lowercase and start with a letter"),
            "Attribute names are snake_case: lowercase letters, digits and _.".into(),
        ));
    }
    let mut pos = skip_spaces(line, name_end);
    let mut default = None;
    if line[pos..].starts_with('=') {
        let start = pos + 1;
        let end = find_unquoted(line, start, ':').ok_or((
            start,
            format!("expected ':' after the default of \"{name}\""),
            "Write name = default : type.".to_string(),
        ))?;
        let d = line[start..end].trim();
        if d.is_empty() {
            return Err((
                start,
                format!("the default of \"{name}\" is empty"),
                "Write name = default : type, or leave out '= '.".into(),
            ));
        }
        default = Some(d.to_string());
        pos = end;
    }
    if !line[pos..].starts_with(':') {
        return Err((pos, format!("expected ':' after \"{name}\""), "Write name : type # comment.".into()));
    }
    let type_start = skip_spaces(line, pos + 1);
    let (type_end, rest_start) = if line[type_start..].starts_with('<') {
        let close = line[type_start..].find('>').map(|i| type_start + i + 1).ok_or((
            type_start,
            "codec type is not closed by '>'".to_string(),
            "Write <blob> or <blob@store>.".to_string(),
        ))?;
        (close, close)
    } else {
        let end = find_unquoted(line, type_start, '#').unwrap_or(line.len());
        (end, end)
    };
    let type_text = line[type_start..type_end].trim();
    if type_text.is_empty() {
        return Err((
            type_start,
            format!("attribute \"{name}\" has no type"),
            "Write name : type, e.g. x : int32.".into(),
        ));
    }
    let rest = line[rest_start..].trim_start();
    let comment = match rest.strip_prefix('#') {
        Some(c) => c.trim_end_matches('#').trim().to_string(),
        None if rest.is_empty() => String::new(),
        None => {
            return Err((
                rest_start,
                format!("unexpected text \"{rest}\" after the type of \"{name}\""),
                "Only a # comment may follow the type.".into(),
            ))
        }
    };
    if comment.starts_with(':') {
        return Err((
            rest_start,
            format!("the comment of \"{name}\" must not start with a colon"),
            "DataJoint reserves ':' at the start of column comments for type information; reword the comment.".into(),
        ));
    }
    Ok(Attribute {
        name: name.to_string(),
        default,
        type_text: type_text.to_string(),
        type_column: type_start + 1,
        comment,
    })
}

fn skip_spaces(line: &str, from: usize) -> usize {
    from + line[from..].len() - line[from..].trim_start().len()
}

/// The byte offset of the first `target` at or after `from` that is outside '...' and "..."
/// (quotes are doubled inside, as in SQL, so a toggle per quote character is exact).
fn find_unquoted(line: &str, from: usize, target: char) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in line[from..].char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == target => return Some(from + i),
            None => {}
        }
    }
    None
}

/// `-> [options] Parent[.proj(new='old', ...)] [# comment]`
fn parse_foreign_key(line: &str) -> Result<ForeignKey, LineError> {
    let arrow = line.find("->").expect("checked by is_foreign_key");
    if !line[..arrow].trim().is_empty() {
        return Err((
            0,
            format!("unexpected text before '->' in \"{line}\""),
            "A foreign key line starts with ->.".into(),
        ));
    }
    let mut pos = skip_spaces(line, arrow + 2);
    let (mut nullable, mut unique) = (false, false);
    if line[pos..].starts_with('[') {
        let close = line[pos..].find(']').map(|i| pos + i).ok_or((
            pos,
            "foreign key options are not closed by ']'".to_string(),
            "Write -> [nullable, unique] Parent.".to_string(),
        ))?;
        for option in line[pos + 1..close].split(',') {
            match option.trim().to_ascii_lowercase().as_str() {
                "nullable" => nullable = true,
                "unique" => unique = true,
                other => {
                    return Err((
                        pos + 1,
                        format!("invalid foreign key option \"{}\"", other.to_ascii_uppercase()),
                        "Foreign key options are nullable and unique.".into(),
                    ))
                }
            }
        }
        pos = skip_spaces(line, close + 1);
    }
    let reference = match find_unquoted(line, pos, '#') {
        Some(hash) => line[pos..hash].trim_end(),
        None => line[pos..].trim_end(),
    };
    let (path, renames) = match reference.find(".proj(") {
        Some(at) => {
            let args = reference[at + ".proj(".len()..].strip_suffix(')').ok_or((
                pos + at,
                format!("unclosed .proj( in \"{reference}\""),
                "Write -> Parent.proj(new_name='old_name').".to_string(),
            ))?;
            (&reference[..at], parse_renames(args).map_err(|(o, m, h)| (pos + at + 6 + o, m, h))?)
        }
        None => (reference, Vec::new()),
    };
    let parent: Vec<String> = path.split('.').map(|s| s.trim().to_string()).collect();
    if parent.iter().any(|p| !is_identifier(p)) || parent.len() > 3 {
        return Err((
            pos,
            format!("\"{reference}\" is not a table reference"),
            "Name the parent as Class, schema.Class, Master.Part or schema.Master.Part, optionally with .proj(new='old').".into(),
        ));
    }
    Ok(ForeignKey { nullable, unique, parent, renames })
}

/// `new='old', new2="old2"`, or nothing.
fn parse_renames(args: &str) -> Result<Vec<(String, String)>, LineError> {
    let mut renames = Vec::new();
    if args.trim().is_empty() {
        return Ok(renames);
    }
    let mut offset = 0;
    for arg in args.split(',') {
        let bad = || {
            (
                offset,
                format!("\"{}\" is not a rename", arg.trim()),
                "Renames are written new_name='old_name'.".to_string(),
            )
        };
        let (new, old) = arg.split_once('=').ok_or_else(bad)?;
        let old = old.trim();
        let unquoted = old
            .strip_prefix('\'')
            .and_then(|o| o.strip_suffix('\''))
            .or_else(|| old.strip_prefix('"').and_then(|o| o.strip_suffix('"')))
            .ok_or_else(bad)?;
        let new = new.trim();
        if !is_identifier(new) || !is_identifier(unquoted) {
            return Err(bad());
        }
        renames.push((new.to_string(), unquoted.to_string()));
        offset += arg.len() + 1;
    }
    Ok(renames)
}

/// `[unique] index(a, b) [# comment]`, case-insensitive; `Ok(None)` if the line is not an index.
fn parse_index(line: &str) -> Result<Option<Index>, (ErrorKind, usize, String, String)> {
    let lower = line.to_ascii_lowercase();
    let (unique, rest_at) = match lower.strip_prefix("unique") {
        Some(rest) if rest.starts_with(char::is_whitespace) => (true, line.len() - rest.trim_start().len()),
        _ => (false, 0),
    };
    let Some(after) = lower[rest_at..].strip_prefix("index") else { return Ok(None) };
    let open = rest_at + 5 + (after.len() - after.trim_start().len());
    if !line[open..].starts_with('(') {
        return Ok(None);
    }
    let body_end = match find_unquoted(line, open, '#') {
        Some(h) => line[..h].trim_end().len(),
        None => line.len(),
    };
    if !line[..body_end].ends_with(')') {
        return Ok(None);
    }
    let args = &line[open + 1..body_end - 1];
    let mut columns = Vec::new();
    for arg in args.split(',') {
        let col = arg.trim();
        if !is_identifier(col) || col.chars().any(|c| c.is_ascii_uppercase()) {
            return Err((
                ErrorKind::NotSupported,
                open + 1,
                format!("index column \"{col}\" is not an attribute name"),
                "Indexes list attribute names; expression and JSON-path indexes are not supported on PostgreSQL.".into(),
            ));
        }
        columns.push(col.to_string());
    }
    Ok(Some(Index { unique, columns }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(line: &str) -> Attribute {
        match parse(line).unwrap().lines.remove(0).item {
            Item::Attribute(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attribute_lines() {
        let a = attr("subject_id : int32        # unique subject id");
        assert_eq!(
            (a.name.as_str(), a.type_text.as_str(), a.comment.as_str()),
            ("subject_id", "int32", "unique subject id")
        );
        assert_eq!(a.default, None);
        assert_eq!(a.type_column, 14);
        let a = attr("dob = null : date");
        assert_eq!(a.default.as_deref(), Some("null"));
        let a = attr("label = 'a:b # c' : varchar(32) # the label ##");
        assert_eq!(a.default.as_deref(), Some("'a:b # c'"));
        assert_eq!(a.comment, "the label");
        let a = attr("sex : enum('M', 'F') # m#f");
        assert_eq!((a.type_text.as_str(), a.comment.as_str()), ("enum('M', 'F')", "m#f"));
        let a = attr("value : < blob @ store > # data");
        assert_eq!(a.type_text, "< blob @ store >");
        let a = attr("t = CURRENT_TIMESTAMP(3) : datetime(3)");
        assert_eq!(a.default.as_deref(), Some("CURRENT_TIMESTAMP(3)"));
    }

    #[test]
    fn structure_comment_separator_and_line_numbers() {
        let d = parse("\n  # Experimental session\n-> Subject\nsession_idx : int16\n\n---\n# note\nstart : datetime(3)\nindex(start)\n").unwrap();
        assert_eq!(d.comment, "Experimental session");
        assert_eq!(d.lines.len(), 4);
        assert_eq!((d.lines[0].number, d.lines[0].in_key), (3, true));
        assert_eq!((d.lines[2].number, d.lines[2].in_key), (8, false));
        assert_eq!(d.lines[3].item, Item::Index(Index { unique: false, columns: vec!["start".into()] }));
        assert_eq!(parse("").unwrap(), Definition { comment: String::new(), lines: vec![] });
    }

    #[test]
    fn foreign_keys() {
        let fk = |l: &str| match parse(l).unwrap().lines.remove(0).item {
            Item::ForeignKey(f) => f,
            other => panic!("{other:?}"),
        };
        let f = fk("-> Session");
        assert_eq!((f.parent, f.nullable, f.unique), (vec!["Session".to_string()], false, false));
        let f = fk("->[nullable, UNIQUE] lab.Rig # where");
        assert_eq!(
            (f.parent, f.nullable, f.unique),
            (vec!["lab".to_string(), "Rig".to_string()], true, true)
        );
        let f = fk("-> Subject.proj(partner_id='subject_id', other = \"x\")");
        assert_eq!(f.renames, vec![("partner_id".into(), "subject_id".into()), ("other".into(), "x".into())]);
        assert_eq!(fk("-> master").parent, vec!["master".to_string()]);
        assert_eq!(fk("-> Subject.proj()").renames, vec![]);
    }

    #[test]
    fn index_lines() {
        let d = parse("a : int32\nUnique Index (a, b) # both\nindex(b)").unwrap();
        assert_eq!(
            d.lines[1].item,
            Item::Index(Index { unique: true, columns: vec!["a".into(), "b".into()] })
        );
        assert!(matches!(d.lines[2].item, Item::Index(Index { unique: false, .. })));
        let e = parse("index(a.b)").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotSupported);
    }

    #[test]
    fn errors_name_line_column_and_hint() {
        let e = parse("# ok\nsubject_id : int32\nX : int32").unwrap_err();
        assert_eq!((e.kind, e.line, e.column), (ErrorKind::Syntax, 3, 1));
        assert!(e.message.contains("lowercase"));
        let e = parse("a int32").unwrap_err();
        assert_eq!((e.line, e.column), (1, 3));
        assert!(e.message.contains("expected ':'"), "{e:?}");
        let e = parse("  _hidden : int32").unwrap_err();
        assert_eq!((e.kind, e.column), (ErrorKind::ReservedName, 3));
        let e = parse("# :bad").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Syntax);
        let e = parse("a : int32 # :typed").unwrap_err();
        assert!(e.message.contains("colon"));
        let e = parse("-> [optional] P").unwrap_err();
        assert!(e.message.contains("\"OPTIONAL\""), "{e:?}");
        let e = parse("-> P & 'x=1'").unwrap_err();
        assert!(e.message.contains("not a table reference"));
        let e = parse("a : <blob").unwrap_err();
        assert!(e.message.contains("not closed"));
        let e = parse("a : <blob> extra").unwrap_err();
        assert!(e.message.contains("unexpected text"));
        assert!(!e.hint.is_empty() && e.location().unwrap().starts_with("line 1, column "));
    }
}
