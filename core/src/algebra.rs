//! DataJoint's query algebra: relation expressions (`lab.Session * lab.Scan & 'depth > 100'`),
//! their textual form, and their translation to one SQL query.
//!
//! Semantics follow datajoint-python 2.x: join and restriction match on namesake attributes only
//! when they share lineage (an error otherwise); the primary key of a join follows functional
//! dependence; aggregation keeps the grouping relation's key; union needs equal keys and
//! disjoint secondary attributes; `dj.u(...)` is a universal set that can restrict and group but
//! not join.
//!
//! The SQL is built from checked pieces only: names through [`sql::ident`], values through
//! [`sql::literal`], conditions and computed attributes through [`restriction::expression`]
//! (parsed with sqlparser and re-emitted). Every column is qualified by a generated alias, so
//! nested expressions flatten into one SELECT where SQL allows it (joins, restrictions and
//! projections of plain relations), and a subquery appears only after GROUP BY, DISTINCT,
//! LIMIT or UNION.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use serde_json::{Map, Value};

use crate::restriction::{self, RestrictionKind, Scope};
use crate::sql;

// ---------------------------------------------------------------------------------------------
// Expressions

/// A relation expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Rel {
    /// A table, named as a class (`lab.Session`, `lab.Recording.Channel`) or by its SQL name.
    Table(String),
    /// `u('a', 'b')`: the universal set of those attributes.
    U(Vec<String>),
    Join(Box<Rel>, Box<Rel>),
    Restrict(Box<Rel>, Cond),
    /// `a - cond`: the rows of `a` that match no part of `cond`.
    Exclude(Box<Rel>, Cond),
    Union(Box<Rel>, Box<Rel>),
    Proj(Box<Rel>, Vec<String>),
    /// `aggr(group, rel, items…)`: one row per row of `group`, computed over the matching rows
    /// of `rel`.
    Aggr {
        group: Box<Rel>,
        rel: Box<Rel>,
        items: Vec<String>,
        exclude_nonmatching: bool,
    },
    /// `extend(a, b)`: `a` with `b`'s attributes, keeping every row of `a` (`a` must determine `b`).
    Extend(Box<Rel>, Box<Rel>),
    Top {
        rel: Box<Rel>,
        limit: Option<u64>,
        order_by: Vec<String>,
        offset: u64,
    },
}

/// A restriction condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    /// An SQL condition on the relation's attributes.
    Sql(String),
    /// A key: attribute values that must all match (attributes not in the relation are ignored).
    Key(Map<String, Value>),
    /// Rows that match some row of another relation on their shared attributes.
    Rel(Box<Rel>),
    /// Any of them (an empty list matches nothing).
    Or(Vec<Cond>),
    /// All of them.
    And(Vec<Cond>),
    Not(Box<Cond>),
    Bool(bool),
}

impl Cond {
    /// A condition from JSON: an object is a key, an array is "any of", a string an SQL
    /// condition, a boolean itself; `{"$not": c}`, `{"$and": [..]}` and `{"$rel": "expr"}` nest
    /// the other forms (attribute names never start with `$`).
    pub fn from_json(value: &Value) -> Result<Cond, AlgebraError> {
        Ok(match value {
            Value::Bool(b) => Cond::Bool(*b),
            Value::String(s) => Cond::Sql(s.clone()),
            Value::Array(items) => Cond::Or(items.iter().map(Cond::from_json).collect::<Result<_, _>>()?),
            Value::Object(map) if map.len() == 1 && map.keys().next().is_some_and(|k| k.starts_with('$')) => {
                let (k, v) = map.iter().next().expect("one entry");
                match (k.as_str(), v) {
                    ("$not", v) => Cond::Not(Box::new(Cond::from_json(v)?)),
                    ("$and", Value::Array(items)) => {
                        Cond::And(items.iter().map(Cond::from_json).collect::<Result<_, _>>()?)
                    }
                    ("$rel", Value::String(text)) => Cond::Rel(Box::new(parse(text)?)),
                    _ => {
                        return Err(AlgebraError::new(
                            Code::InvalidParameter,
                            format!("unknown condition form {k}"),
                            value.to_string(),
                            "Use {\"$not\": c}, {\"$and\": [c, …]} or {\"$rel\": \"expression\"}.",
                        ))
                    }
                }
            }
            Value::Object(map) => Cond::Key(map.clone()),
            Value::Null | Value::Number(_) => {
                return Err(AlgebraError::new(
                    Code::InvalidParameter,
                    "a condition is a key object, an array of conditions, an SQL string or a boolean",
                    value.to_string(),
                    "Pass e.g. '{\"subject_id\": 1}' or '[{\"subject_id\": 1}, {\"subject_id\": 2}]'.",
                ))
            }
        })
    }

    /// The JSON form read by [`Cond::from_json`].
    pub fn to_json(&self) -> Value {
        match self {
            Cond::Sql(s) => Value::String(s.clone()),
            Cond::Key(map) => Value::Object(map.clone()),
            Cond::Rel(r) => serde_json::json!({ "$rel": r.to_string() }),
            Cond::Or(items) => Value::Array(items.iter().map(Cond::to_json).collect()),
            Cond::And(items) => {
                serde_json::json!({ "$and": items.iter().map(Cond::to_json).collect::<Vec<_>>() })
            }
            Cond::Not(c) => serde_json::json!({ "$not": c.to_json() }),
            Cond::Bool(b) => Value::Bool(*b),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What kind of mistake; the extension maps each to a SQLSTATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 42601
    Syntax,
    /// 42P01
    UndefinedTable,
    /// 42703
    UndefinedColumn,
    /// 42702: same name, different lineage.
    LineageClash,
    /// 42804: union of incompatible relations.
    Incompatible,
    /// 42809: a condition where a relation is needed, or the reverse.
    WrongOperand,
    /// 0A000
    NotSupported,
    /// 42P10: excluding a key attribute, a grouping or extension that is not determined.
    InvalidReference,
    /// 42701
    DuplicateColumn,
    /// 42602
    InvalidName,
    /// 22023
    InvalidParameter,
    /// 54001
    TooComplex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlgebraError {
    pub code: Code,
    pub message: String,
    /// The offending part of the expression.
    pub fragment: String,
    pub hint: String,
}

impl AlgebraError {
    pub fn new(
        code: Code,
        message: impl Into<String>,
        fragment: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        AlgebraError { code, message: message.into(), fragment: fragment.into(), hint: hint.into() }
    }
}

impl fmt::Display for AlgebraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at: {})", self.message, self.fragment)
    }
}

impl From<restriction::RestrictionError> for AlgebraError {
    fn from(e: restriction::RestrictionError) -> Self {
        let code = match e.kind {
            RestrictionKind::Syntax => Code::Syntax,
            RestrictionKind::UnknownAttribute => Code::UndefinedColumn,
            RestrictionKind::TooLong => Code::TooComplex,
        };
        AlgebraError { code, message: e.message, fragment: e.fragment, hint: e.hint }
    }
}

const RENAME_HINT: &str =
    "Rename one of them with dj.proj, e.g. dj.proj(rel, 'other_id = subject_id'), before combining.";

// ---------------------------------------------------------------------------------------------
// Textual form

fn precedence(rel: &Rel) -> u8 {
    match rel {
        Rel::Restrict(..) => 1,
        Rel::Union(..) | Rel::Exclude(..) => 2,
        Rel::Join(..) => 3,
        _ => 4,
    }
}

/// A binary operand: parenthesized when it is itself an operator expression, except the left
/// operand of a chain of the same operator (`a * b * c`, `a & c1 & c2`).
fn operand(out: &mut fmt::Formatter<'_>, rel: &Rel, chain_of: Option<u8>) -> fmt::Result {
    let p = precedence(rel);
    if p == 4 || chain_of == Some(p) && matches!(rel, Rel::Join(..) | Rel::Restrict(..)) {
        write!(out, "{rel}")
    } else {
        write!(out, "({rel})")
    }
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `inner`: inside not(), and() or a list, where a relation needs no parentheses.
fn write_cond(out: &mut fmt::Formatter<'_>, cond: &Cond, inner: bool) -> fmt::Result {
    match cond {
        Cond::Sql(s) => write!(out, "{}", quoted(s)),
        Cond::Key(map) => write!(out, "{}", Value::Object(map.clone())),
        Cond::Rel(r) if inner => write!(out, "{r}"),
        Cond::Rel(r) => operand(out, r, None),
        Cond::Bool(b) => write!(out, "{b}"),
        Cond::Not(c) => {
            write!(out, "not(")?;
            write_cond(out, c, true)?;
            write!(out, ")")
        }
        Cond::Or(items) | Cond::And(items) => {
            let (open, close) = if matches!(cond, Cond::Or(_)) { ("[", "]") } else { ("and(", ")") };
            write!(out, "{open}")?;
            for (i, c) in items.iter().enumerate() {
                if i > 0 {
                    write!(out, ", ")?;
                }
                write_cond(out, c, true)?;
            }
            write!(out, "{close}")
        }
    }
}

fn write_strings(out: &mut fmt::Formatter<'_>, items: &[String]) -> fmt::Result {
    for item in items {
        write!(out, ", {}", quoted(item))?;
    }
    Ok(())
}

impl fmt::Display for Rel {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rel::Table(name) => write!(out, "{name}"),
            Rel::U(attrs) => {
                write!(out, "u({})", attrs.iter().map(|a| quoted(a)).collect::<Vec<_>>().join(", "))
            }
            Rel::Join(a, b) | Rel::Union(a, b) => {
                let op = if matches!(self, Rel::Join(..)) { "*" } else { "+" };
                operand(out, a, Some(precedence(self)))?;
                write!(out, " {op} ")?;
                operand(out, b, None)
            }
            Rel::Restrict(a, c) | Rel::Exclude(a, c) => {
                let op = if matches!(self, Rel::Restrict(..)) { "&" } else { "-" };
                operand(out, a, Some(precedence(self)))?;
                write!(out, " {op} ")?;
                write_cond(out, c, false)
            }
            Rel::Proj(r, items) => {
                write!(out, "proj({r}")?;
                write_strings(out, items)?;
                write!(out, ")")
            }
            Rel::Aggr { group, rel, items, exclude_nonmatching } => {
                write!(out, "aggr({group}, {rel}")?;
                write_strings(out, items)?;
                if *exclude_nonmatching {
                    write!(out, ", exclude_nonmatching=true")?;
                }
                write!(out, ")")
            }
            Rel::Extend(a, b) => write!(out, "extend({a}, {b})"),
            Rel::Top { rel, limit, order_by, offset } => {
                write!(out, "top({rel}, ")?;
                match limit {
                    Some(n) => write!(out, "{n}")?,
                    None => write!(out, "null")?,
                }
                write_strings(out, order_by)?;
                if *offset > 0 {
                    write!(out, ", offset={offset}")?;
                }
                write!(out, ")")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
    Dot,
    Equals,
    Op(char),
    Str(String),
    Json(Map<String, Value>),
    Number(u64),
    Word(String),
    Quoted(String),
    End,
}

/// Up to 40 characters of `text` from `pos`, for an error's DETAIL.
fn fragment_at(text: &str, pos: usize) -> String {
    let rest: String = text[pos..].chars().take(40).collect();
    if rest.trim().is_empty() {
        "(end of the expression)".into()
    } else {
        rest
    }
}

/// The value of the `quote`-delimited run that starts `text` (the quote doubled inside) and
/// the run's length in bytes; `None` when it does not end.
fn unquote(text: &str, quote: char) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((i, ch)) = chars.next() {
        if ch == quote {
            if chars.peek().map(|(_, c)| *c) != Some(quote) {
                return Some((value, i + 1));
            }
            chars.next();
        }
        value.push(ch);
    }
    None
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

fn syntax(message: impl Into<String>, fragment: impl Into<String>) -> AlgebraError {
    AlgebraError::new(
        Code::Syntax,
        message,
        fragment,
        "Write e.g. (lab.Session * lab.Scan) & 'depth > 100', proj(lab.Session, 'session_date'), \
         aggr(lab.Subject, lab.Session, 'n = count(*)').",
    )
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn fragment(&self) -> String {
        fragment_at(self.text, self.pos)
    }

    fn next(&mut self) -> Result<(Token, usize), AlgebraError> {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
        let start = self.pos;
        let Some(c) = trimmed.chars().next() else { return Ok((Token::End, start)) };
        let one = |t: Token, lexer: &mut Lexer| {
            lexer.pos += c.len_utf8();
            Ok((t, start))
        };
        match c {
            '(' => one(Token::Open, self),
            ')' => one(Token::Close, self),
            '[' => one(Token::OpenList, self),
            ']' => one(Token::CloseList, self),
            ',' => one(Token::Comma, self),
            '.' => one(Token::Dot, self),
            '=' => {
                if trimmed.starts_with("=>") {
                    self.pos += 1;
                }
                one(Token::Equals, self)
            }
            '*' | '&' | '-' | '+' => one(Token::Op(c), self),
            '\'' | '"' => {
                let Some((value, length)) = unquote(trimmed, c) else {
                    let what = if c == '\'' { "unterminated string" } else { "unterminated quoted name" };
                    return Err(syntax(what, self.fragment()));
                };
                self.pos += length;
                Ok((if c == '\'' { Token::Str(value) } else { Token::Quoted(value) }, start))
            }
            '{' => {
                let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
                match stream.next() {
                    Some(Ok(Value::Object(map))) => {
                        self.pos += stream.byte_offset();
                        Ok((Token::Json(map), start))
                    }
                    _ => Err(syntax("malformed JSON key", self.fragment())),
                }
            }
            c if c.is_ascii_digit() => {
                let digits: String = trimmed.chars().take_while(|c| c.is_ascii_digit()).collect();
                self.pos += digits.len();
                digits
                    .parse()
                    .map(|n| (Token::Number(n), start))
                    .map_err(|_| syntax("number too large", digits))
            }
            c if c.is_alphanumeric() || c == '_' || c == '#' || c == '~' => {
                let word: String = trimmed
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '#' | '~' | '$'))
                    .collect();
                self.pos += word.len();
                Ok((Token::Word(word), start))
            }
            _ => Err(syntax(format!("unexpected character {c:?}"), self.fragment())),
        }
    }
}

/// What the parser has read: a relation, or a condition (only the right of `&` and `-`).
enum Operand {
    Rel(Rel),
    Cond(Cond),
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    token: Token,
    at: usize,
    /// Parentheses, lists and function calls currently open.
    depth: usize,
    /// Operators and functions read so far.
    operators: usize,
}

/// Limits that keep parsing, compiling, printing and dropping an expression far from the end of
/// the backend's stack, whatever text arrives.
const MAX_DEPTH: usize = 64;
const MAX_OPERATORS: usize = 256;

/// Parses the textual form of a relation expression.
pub fn parse(text: &str) -> Result<Rel, AlgebraError> {
    // `{"$rel": "…"}` conditions parse their text with a parser of their own: bound the nesting
    // of those too, so the limits below hold for the whole expression.
    thread_local!(static NESTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
    struct Nesting;
    impl Drop for Nesting {
        fn drop(&mut self) {
            NESTED.with(|n| n.set(n.get() - 1));
        }
    }
    let level = NESTED.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let _nesting = Nesting;
    if level > 4 {
        return Err(AlgebraError::new(
            Code::TooComplex,
            "relations nested in JSON conditions more than 4 levels deep",
            text.chars().take(40).collect::<String>(),
            "Write the relation directly instead of as {\"$rel\": \"…\"}.",
        ));
    }
    let mut p = Parser { lexer: Lexer { text, pos: 0 }, token: Token::End, at: 0, depth: 0, operators: 0 };
    p.advance()?;
    let operand = p.expression()?;
    if p.token != Token::End {
        return Err(syntax("unexpected text after the expression", p.fragment()));
    }
    p.relation(operand)
}

impl<'a> Parser<'a> {
    fn advance(&mut self) -> Result<Token, AlgebraError> {
        let (token, at) = self.lexer.next()?;
        self.at = at;
        Ok(std::mem::replace(&mut self.token, token))
    }

    fn fragment(&self) -> String {
        fragment_at(self.lexer.text, self.at)
    }

    fn expect(&mut self, token: Token, what: &str) -> Result<(), AlgebraError> {
        if self.token == token {
            self.advance()?;
            Ok(())
        } else {
            Err(syntax(format!("expected {what}"), self.fragment()))
        }
    }

    fn relation(&self, operand: Operand) -> Result<Rel, AlgebraError> {
        match operand {
            Operand::Rel(r) => Ok(r),
            Operand::Cond(c) => Err(AlgebraError::new(
                Code::WrongOperand,
                "a condition is not a relation",
                Cond::to_json(&c).to_string(),
                "Conditions go on the right of & and -; name a table (schema.Class) or an expression here.",
            )),
        }
    }

    fn condition(operand: Operand) -> Cond {
        match operand {
            Operand::Rel(r) => Cond::Rel(Box::new(r)),
            Operand::Cond(c) => c,
        }
    }

    /// `&` binds loosest, then `+` and `-`, then `*` (as in Python).
    fn expression(&mut self) -> Result<Operand, AlgebraError> {
        let mut left = self.additive()?;
        while self.token == Token::Op('&') {
            self.operator()?;
            self.advance()?;
            let right = self.additive()?;
            left = Operand::Rel(Rel::Restrict(Box::new(self.relation(left)?), Self::condition(right)));
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Operand, AlgebraError> {
        let mut left = self.multiplicative()?;
        while let Token::Op(op @ ('+' | '-')) = self.token {
            self.operator()?;
            self.advance()?;
            let right = self.multiplicative()?;
            let l = Box::new(self.relation(left)?);
            left = Operand::Rel(if op == '+' {
                Rel::Union(l, Box::new(self.relation(right)?))
            } else {
                Rel::Exclude(l, Self::condition(right))
            });
        }
        Ok(left)
    }

    fn multiplicative(&mut self) -> Result<Operand, AlgebraError> {
        let mut left = self.atom()?;
        while self.token == Token::Op('*') {
            self.operator()?;
            self.advance()?;
            let right = self.atom()?;
            left = Operand::Rel(Rel::Join(Box::new(self.relation(left)?), Box::new(self.relation(right)?)));
        }
        Ok(left)
    }

    /// Counts an operator or function against [`MAX_OPERATORS`].
    fn operator(&mut self) -> Result<(), AlgebraError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(AlgebraError::new(
                Code::TooComplex,
                format!("the expression has more than {MAX_OPERATORS} operators"),
                self.fragment(),
                "Split it: store parts as views (dj.create_view) and combine those.",
            ));
        }
        Ok(())
    }

    fn atom(&mut self) -> Result<Operand, AlgebraError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(AlgebraError::new(
                Code::TooComplex,
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
                self.fragment(),
                "Split it: store parts as views (dj.create_view) and combine those.",
            ));
        }
        let out = self.atom_inner();
        self.depth -= 1;
        out
    }

    fn atom_inner(&mut self) -> Result<Operand, AlgebraError> {
        let at = self.fragment();
        match self.advance()? {
            Token::Open => {
                let inner = self.expression()?;
                self.expect(Token::Close, "')'")?;
                Ok(inner)
            }
            Token::Str(s) => Ok(Operand::Cond(Cond::Sql(s))),
            Token::Json(map) => Ok(Operand::Cond(Cond::from_json(&Value::Object(map))?)),
            Token::OpenList => Ok(Operand::Cond(Cond::Or(self.conditions(Token::CloseList, "']'")?))),
            Token::Word(w) if self.token == Token::Open => {
                self.advance()?;
                self.function(&w.to_lowercase(), &at)
            }
            Token::Word(w) if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") => {
                Ok(Operand::Cond(Cond::Bool(w.eq_ignore_ascii_case("true"))))
            }
            Token::Word(w) => self.name(w, false),
            Token::Quoted(q) => self.name(q, true),
            _ => Err(syntax("expected a table, a condition or a function", at)),
        }
    }

    /// `schema.Class`, `schema.Master.Part`, `"schema"."table"`: kept as written (quotes included)
    /// for the catalog to resolve. (A name without schema is the catalog's to accept or refuse:
    /// make functions name the tables of their target's schema so.)
    fn name(&mut self, first: String, quoted: bool) -> Result<Operand, AlgebraError> {
        let part = |s: String, q: bool| if q { sql::ident(&s) } else { s };
        let mut name = part(first, quoted);
        while self.token == Token::Dot {
            self.advance()?;
            match self.advance()? {
                Token::Word(w) => name.push_str(&format!(".{w}")),
                Token::Quoted(q) => name.push_str(&format!(".{}", sql::ident(&q))),
                _ => return Err(syntax("expected a name after '.'", self.fragment())),
            }
        }
        Ok(Operand::Rel(Rel::Table(name)))
    }

    fn strings_until_close(&mut self, named: &mut Vec<(String, Token)>) -> Result<Vec<String>, AlgebraError> {
        let mut items = Vec::new();
        while self.token == Token::Comma {
            self.advance()?;
            match self.advance()? {
                Token::Str(s) => items.push(s),
                Token::Word(w) if self.token == Token::Equals => {
                    self.advance()?;
                    named.push((w.to_lowercase(), self.advance()?));
                }
                _ => return Err(syntax("expected a quoted string", self.fragment())),
            }
        }
        self.expect(Token::Close, "')'")?;
        Ok(items)
    }

    /// Comma-separated conditions up to `close` (which it consumes); none is allowed.
    fn conditions(&mut self, close: Token, what: &str) -> Result<Vec<Cond>, AlgebraError> {
        let mut items = Vec::new();
        if self.token != close {
            loop {
                items.push(Self::condition(self.expression()?));
                if self.token != Token::Comma {
                    break;
                }
                self.advance()?;
            }
        }
        self.expect(close, what)?;
        Ok(items)
    }

    fn rel_argument(&mut self) -> Result<Rel, AlgebraError> {
        let operand = self.expression()?;
        self.relation(operand)
    }

    fn function(&mut self, name: &str, at: &str) -> Result<Operand, AlgebraError> {
        self.operator()?;
        let mut named = Vec::new();
        let rel = match name {
            "u" => {
                let mut attrs = Vec::new();
                if self.token != Token::Close {
                    loop {
                        match self.advance()? {
                            Token::Str(s) => attrs.push(s),
                            _ => return Err(syntax("u() takes quoted attribute names", self.fragment())),
                        }
                        if self.token != Token::Comma {
                            break;
                        }
                        self.advance()?;
                    }
                }
                self.expect(Token::Close, "')'")?;
                Rel::U(attrs)
            }
            "not" => {
                let inner = Self::condition(self.expression()?);
                self.expect(Token::Close, "')'")?;
                return Ok(Operand::Cond(Cond::Not(Box::new(inner))));
            }
            "and" => return Ok(Operand::Cond(Cond::And(self.conditions(Token::Close, "')'")?))),
            "proj" => {
                let r = self.rel_argument()?;
                Rel::Proj(Box::new(r), self.strings_until_close(&mut named)?)
            }
            "extend" => {
                let a = self.rel_argument()?;
                self.expect(Token::Comma, "','")?;
                let b = self.rel_argument()?;
                self.expect(Token::Close, "')'")?;
                Rel::Extend(Box::new(a), Box::new(b))
            }
            "aggr" => {
                let group = self.rel_argument()?;
                self.expect(Token::Comma, "','")?;
                let rel = self.rel_argument()?;
                let items = self.strings_until_close(&mut named)?;
                let mut exclude_nonmatching = false;
                for (key, value) in named.drain(..) {
                    match (key.as_str(), value) {
                        ("exclude_nonmatching", Token::Word(w)) if matches!(w.as_str(), "true" | "false") => {
                            exclude_nonmatching = w == "true"
                        }
                        _ => return Err(syntax(format!("aggr has no option {key}"), at)),
                    }
                }
                Rel::Aggr { group: Box::new(group), rel: Box::new(rel), items, exclude_nonmatching }
            }
            "top" => {
                let rel = self.rel_argument()?;
                self.expect(Token::Comma, "','")?;
                let limit = match self.advance()? {
                    Token::Number(n) => Some(n),
                    Token::Word(w) if w.eq_ignore_ascii_case("null") => None,
                    _ => return Err(syntax("top's limit is a number or null", self.fragment())),
                };
                let order_by = self.strings_until_close(&mut named)?;
                let mut offset = 0;
                for (key, value) in named.drain(..) {
                    match (key.as_str(), value) {
                        ("offset", Token::Number(n)) => offset = n,
                        _ => return Err(syntax(format!("top has no option {key}"), at)),
                    }
                }
                Rel::Top { rel: Box::new(rel), limit, order_by, offset }
            }
            other => {
                return Err(AlgebraError::new(
                    Code::Syntax,
                    format!("unknown function {other}"),
                    at,
                    "Functions: proj, aggr, extend, top, u, not, and.",
                ))
            }
        };
        if !named.is_empty() {
            return Err(syntax(format!("{name} takes no option {}", named[0].0), at));
        }
        Ok(Operand::Rel(rel))
    }
}

// ---------------------------------------------------------------------------------------------
// Headings and the catalog

/// One attribute of a heading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub in_key: bool,
    /// `schema.table.attribute` where the attribute originates; `None` for computed attributes
    /// and for secondary attributes that are not foreign keys.
    pub lineage: Option<String>,
}

/// A table as the catalog knows it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// How expressions print it (`lab.Session`).
    pub display: String,
    pub schema: String,
    pub table: String,
    /// Visible attributes in declaration order (hidden `_…` attributes left out).
    pub attributes: Vec<Attribute>,
    /// Whether the schema records lineage (`~lineage`); without it namesakes match by name.
    pub lineage_available: bool,
}

/// Where the compiler finds tables.
pub trait Catalog {
    type Error: From<AlgebraError>;
    fn table(&mut self, name: &str) -> Result<TableInfo, Self::Error>;
}

// ---------------------------------------------------------------------------------------------
// Compilation

#[derive(Clone, Debug)]
struct Column {
    attr: Attribute,
    /// SQL for the attribute in the scope of the query's FROM clause.
    sql: String,
}

impl Column {
    /// Whether the SQL is a plain column of a FROM item (`t3."depth"`), not a computation.
    fn is_reference(&self) -> bool {
        let Some((alias, name)) = self.sql.split_once('.') else { return false };
        alias.len() > 1
            && alias.starts_with('t')
            && alias[1..].chars().all(|c| c.is_ascii_digit())
            && name.starts_with('"')
            && name.ends_with('"')
    }
}

/// A query under construction: SELECT columns FROM from WHERE wheres [GROUP BY …] [ORDER BY …
/// LIMIT …].
#[derive(Clone, Debug)]
struct Query {
    columns: Vec<Column>,
    from: String,
    /// Whether `from` is a join (parenthesized when it is the right side of another join).
    from_is_join: bool,
    wheres: Vec<String>,
    group_by: Option<Vec<String>>,
    distinct: bool,
    order_by: Vec<String>,
    /// `order_by` over the output's attribute names.
    output_order: Vec<String>,
    limit: Option<u64>,
    offset: u64,
    lineage_available: bool,
    /// `Some` for `dj.u(...)`, which only restricts and groups.
    universal: Option<Vec<String>>,
}

impl Query {
    fn flat(&self) -> bool {
        self.group_by.is_none()
            && !self.distinct
            && self.order_by.is_empty()
            && self.limit.is_none()
            && self.offset == 0
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.attr.name == name)
    }

    fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.attr.name.clone()).collect()
    }

    fn primary_key(&self) -> Vec<String> {
        self.columns.iter().filter(|c| c.attr.in_key).map(|c| c.attr.name.clone()).collect()
    }

    fn scope(&self, aggregates: bool) -> Scope {
        Scope {
            columns: self.columns.iter().map(|c| (c.attr.name.clone(), c.sql.clone())).collect(),
            aggregates,
        }
    }

    fn determines(&self, other: &Query) -> bool {
        other.columns.iter().filter(|c| c.attr.in_key).all(|c| self.column(&c.attr.name).is_some())
    }

    fn sql(&self) -> String {
        let mut out = String::from("SELECT ");
        if self.distinct {
            out.push_str("DISTINCT ");
        }
        if self.columns.is_empty() {
            out.push_str("TRUE AS \"_\"");
        }
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let ident = sql::ident(&c.attr.name);
            if c.is_reference() && c.sql.ends_with(&format!(".{ident}")) {
                out.push_str(&c.sql);
            } else {
                let _ = write!(out, "{} AS {ident}", c.sql);
            }
        }
        let _ = write!(out, " FROM {}", self.from);
        if !self.wheres.is_empty() {
            let _ = write!(out, " WHERE {}", self.wheres.join(" AND "));
        }
        if let Some(group) = &self.group_by {
            if !group.is_empty() {
                let _ = write!(out, " GROUP BY {}", group.join(", "));
            }
        }
        if !self.order_by.is_empty() {
            let _ = write!(out, " ORDER BY {}", self.order_by.join(", "));
        }
        if let Some(limit) = self.limit {
            let _ = write!(out, " LIMIT {limit}");
        }
        if self.offset > 0 {
            let _ = write!(out, " OFFSET {}", self.offset);
        }
        out
    }
}

/// A compiled expression: its SQL and its heading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub sql: String,
    pub heading: Vec<Attribute>,
    /// The ORDER BY of a `top` over the result's columns (`"rate" DESC`), for a fetch to keep
    /// that order; empty otherwise.
    pub order: Vec<String>,
}

impl Compiled {
    pub fn primary_key(&self) -> Vec<String> {
        self.heading.iter().filter(|a| a.in_key).map(|a| a.name.clone()).collect()
    }
}

/// Compiles an expression to SQL, reading tables from `catalog`. Also canonicalizes table names
/// in `rel` (as the catalog displays them), so that its text form round-trips.
pub fn compile<C: Catalog>(rel: &mut Rel, catalog: &mut C) -> Result<Compiled, C::Error> {
    let mut compiler = Compiler { catalog, aliases: 0, tables: HashMap::new() };
    let query = compiler.rel(rel)?;
    if query.universal.is_some() {
        return Err(AlgebraError::new(
            Code::NotSupported,
            "dj.u(...) alone is not a relation that can be queried",
            rel.to_string(),
            "Restrict it by a relation (dj.u('a') & rel) or aggregate with it (dj.aggr(dj.u('a'), rel, …)).",
        )
        .into());
    }
    Ok(Compiled {
        sql: query.sql(),
        heading: query.columns.iter().map(|c| c.attr.clone()).collect(),
        order: query.output_order,
    })
}

struct Compiler<'c, C: Catalog> {
    catalog: &'c mut C,
    aliases: usize,
    tables: HashMap<String, TableInfo>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Checked expressions come back with every compound already in parentheses.
fn parenthesized(sql: String) -> String {
    if sql.starts_with('(') {
        sql
    } else {
        format!("({sql})")
    }
}

impl<C: Catalog> Compiler<'_, C> {
    fn alias(&mut self) -> String {
        self.aliases += 1;
        format!("t{}", self.aliases)
    }

    /// `q` as one subquery in FROM, when it cannot take more clauses.
    fn wrap(&mut self, q: Query) -> Query {
        if q.flat() {
            return q;
        }
        self.subquery(q)
    }

    fn subquery(&mut self, q: Query) -> Query {
        let alias = self.alias();
        let sql = q.sql();
        Query {
            columns: q
                .columns
                .into_iter()
                .map(|c| Column { sql: format!("{alias}.{}", sql::ident(&c.attr.name)), attr: c.attr })
                .collect(),
            from: format!("({sql}) AS {alias}"),
            from_is_join: false,
            wheres: Vec::new(),
            group_by: None,
            distinct: false,
            order_by: Vec::new(),
            output_order: Vec::new(),
            limit: None,
            offset: 0,
            lineage_available: q.lineage_available,
            universal: None,
        }
    }

    fn not_universal(&self, q: &Query, what: &str, rel: &str) -> Result<(), AlgebraError> {
        if q.universal.is_some() {
            return Err(AlgebraError::new(
                Code::NotSupported,
                format!("dj.u(...) cannot be {what}"),
                rel.to_string(),
                "dj.u restricts (dj.u('a') & rel) and groups (dj.aggr(dj.u('a'), rel, 'n = count(*)')); \
                 in DataJoint 2.x joins with dj.u are no longer needed.",
            ));
        }
        Ok(())
    }

    fn rel(&mut self, rel: &mut Rel) -> Result<Query, C::Error> {
        let text = rel.to_string();
        let negate = matches!(rel, Rel::Exclude(..));
        match rel {
            Rel::Table(name) => {
                let info = match self.tables.get(name.as_str()) {
                    Some(info) => info.clone(),
                    None => {
                        let info = self.catalog.table(name)?;
                        self.tables.insert(name.clone(), info.clone());
                        info
                    }
                };
                *name = info.display.clone();
                let alias = self.alias();
                Ok(Query {
                    columns: info
                        .attributes
                        .iter()
                        .map(|a| Column { attr: a.clone(), sql: format!("{alias}.{}", sql::ident(&a.name)) })
                        .collect(),
                    from: format!("{} AS {alias}", sql::qualified(&info.schema, &info.table)),
                    from_is_join: false,
                    wheres: Vec::new(),
                    group_by: None,
                    distinct: false,
                    order_by: Vec::new(),
                    output_order: Vec::new(),
                    limit: None,
                    offset: 0,
                    lineage_available: info.lineage_available,
                    universal: None,
                })
            }
            Rel::U(attrs) => {
                for (i, a) in attrs.iter().enumerate() {
                    if attrs[..i].contains(a) {
                        return Err(AlgebraError::new(
                            Code::DuplicateColumn,
                            format!("\"{a}\" appears twice in dj.u"),
                            a.clone(),
                            "Name each attribute once.",
                        )
                        .into());
                    }
                    if !valid_name(a) {
                        return Err(AlgebraError::new(
                            Code::InvalidName,
                            format!("\"{a}\" is not an attribute name"),
                            a.clone(),
                            "Attribute names are lowercase letters, digits and underscores.",
                        )
                        .into());
                    }
                }
                Ok(Query {
                    columns: Vec::new(),
                    from: String::new(),
                    from_is_join: false,
                    wheres: Vec::new(),
                    group_by: None,
                    distinct: false,
                    order_by: Vec::new(),
                    output_order: Vec::new(),
                    limit: None,
                    offset: 0,
                    lineage_available: true,
                    universal: Some(attrs.clone()),
                })
            }
            Rel::Join(a, b) => {
                let a = self.rel(a)?;
                let b = self.rel(b)?;
                self.not_universal(&a, "joined", &text)?;
                self.not_universal(&b, "joined", &text)?;
                Ok(self.join(a, b, false, &text)?)
            }
            Rel::Extend(a, b) => {
                let a = self.rel(a)?;
                let b = self.rel(b)?;
                self.not_universal(&a, "extended", &text)?;
                self.not_universal(&b, "an extension", &text)?;
                if !a.determines(&b) {
                    let missing: Vec<String> =
                        b.primary_key().into_iter().filter(|k| a.column(k).is_none()).collect();
                    return Err(AlgebraError::new(
                        Code::InvalidReference,
                        format!("extend needs the left operand to determine the right one; missing: {}", missing.join(", ")),
                        text,
                        "Every primary-key attribute of the right operand must be an attribute of the left one; use a join (*) otherwise.",
                    )
                    .into());
                }
                Ok(self.join(a, b, true, &text)?)
            }
            Rel::Restrict(a, cond) | Rel::Exclude(a, cond) => {
                let q = self.rel(a)?;
                if let Some(attrs) = q.universal.clone() {
                    return self.restrict_universal(&attrs, cond, negate, &text);
                }
                let q = self.wrap(q);
                let mut condition = self.condition(&q, cond)?;
                if negate {
                    condition = format!("(NOT {condition})");
                }
                let mut q = q;
                if condition != "TRUE" {
                    q.wheres.push(condition);
                }
                Ok(q)
            }
            Rel::Union(a, b) => {
                let a = self.rel(a)?;
                let b = self.rel(b)?;
                self.not_universal(&a, "unioned", &text)?;
                self.not_universal(&b, "unioned", &text)?;
                Ok(self.union(a, b, &text)?)
            }
            Rel::Proj(r, items) => {
                let q = self.rel(r)?;
                self.not_universal(&q, "projected", &text)?;
                let q = self.wrap(q);
                Ok(self.proj(q, items, &text)?)
            }
            Rel::Aggr { group, rel: r, items, exclude_nonmatching } => {
                let g = self.rel(group)?;
                let r = self.rel(r)?;
                self.not_universal(&r, "aggregated", &text)?;
                Ok(self.aggr(g, r, items, *exclude_nonmatching, &text)?)
            }
            Rel::Top { rel: r, limit, order_by, offset } => {
                let q = self.rel(r)?;
                self.not_universal(&q, "limited", &text)?;
                // ORDER BY a computed constant would read as a column position: order plain columns.
                let mut q =
                    if q.columns.iter().all(Column::is_reference) { self.wrap(q) } else { self.subquery(q) };
                q.order_by = self.order_by(&q, order_by)?;
                let heading: Vec<Attribute> = q.columns.iter().map(|c| c.attr.clone()).collect();
                q.output_order = order_by_attributes(&heading, order_by)?;
                q.limit = *limit;
                q.offset = *offset;
                Ok(q)
            }
        }
    }

    /// `ORDER BY` items: `KEY`, or an attribute with optional ASC/DESC and NULLS FIRST/LAST.
    fn order_by(&self, q: &Query, items: &[String]) -> Result<Vec<String>, AlgebraError> {
        order_by(&q.columns.iter().map(|c| (c.attr.clone(), c.sql.clone())).collect::<Vec<_>>(), items)
    }

    fn restrict_universal(
        &mut self,
        attrs: &[String],
        cond: &mut Cond,
        negate: bool,
        text: &str,
    ) -> Result<Query, C::Error> {
        let Cond::Rel(other) = cond else {
            return Err(AlgebraError::new(
                Code::WrongOperand,
                "dj.u(...) can only be restricted by a relation",
                text.to_string(),
                "Write dj.u('a') & (rel & 'condition').",
            )
            .into());
        };
        if negate {
            return Err(AlgebraError::new(
                Code::NotSupported,
                "dj.u(...) - rel is an infinite set",
                text.to_string(),
                "Restrict instead: dj.u('a') & rel gives the values of a that occur in rel.",
            )
            .into());
        }
        let q = self.rel(other)?;
        self.not_universal(&q, "a restriction", text)?;
        let q = self.wrap(q);
        let mut columns = Vec::new();
        for a in attrs {
            let Some(c) = q.column(a) else {
                return Err(self.missing(a, &q, text).into());
            };
            let mut c = c.clone();
            c.attr.in_key = true;
            columns.push(c);
        }
        let all_key = q.primary_key().iter().all(|k| attrs.contains(k));
        Ok(Query { columns, distinct: !all_key, ..q })
    }

    fn missing(&self, name: &str, q: &Query, text: &str) -> AlgebraError {
        AlgebraError::new(
            Code::UndefinedColumn,
            format!("\"{name}\" is not an attribute of {text}"),
            name,
            format!("Its attributes are: {}.", q.names().join(", ")),
        )
    }

    /// Namesakes must share lineage (when both sides record lineage).
    fn check_namesakes(&self, a: &Query, b: &Query, text: &str) -> Result<Vec<String>, AlgebraError> {
        let common: Vec<String> = a.names().into_iter().filter(|n| b.column(n).is_some()).collect();
        if a.lineage_available && b.lineage_available {
            for name in &common {
                let la = &a.column(name).expect("common").attr.lineage;
                let lb = &b.column(name).expect("common").attr.lineage;
                if la.is_none() || lb.is_none() || la != lb {
                    let show = |l: &Option<String>| l.clone().unwrap_or_else(|| "none".into());
                    return Err(AlgebraError::new(
                        Code::LineageClash,
                        format!(
                            "cannot match on attribute \"{name}\": different lineages ({} vs {})",
                            show(la),
                            show(lb)
                        ),
                        text.to_string(),
                        if la.is_none() || lb.is_none() {
                            format!(
                                "Attributes without lineage (computed, or secondary and not a foreign key) never match. {RENAME_HINT}"
                            )
                        } else {
                            RENAME_HINT.to_string()
                        },
                    ));
                }
            }
        }
        Ok(common)
    }

    fn join(&mut self, a: Query, b: Query, left: bool, text: &str) -> Result<Query, AlgebraError> {
        let common = self.check_namesakes(&a, &b, text)?;
        let a = self.wrap(a);
        // Outer joins: a computed column of the right side must be NULL where nothing matched,
        // so it is computed inside a subquery, not over the outer join's rows.
        let b =
            if left && b.columns.iter().any(|c| !c.is_reference()) { self.subquery(b) } else { self.wrap(b) };
        let on: Vec<String> = common
            .iter()
            .map(|n| format!("{} = {}", a.column(n).expect("common").sql, b.column(n).expect("common").sql))
            .collect();
        let right = if b.from_is_join { format!("({})", b.from) } else { b.from.clone() };
        let mut wheres = a.wheres.clone();
        let from = if left {
            let mut on = on;
            on.extend(b.wheres.iter().cloned());
            if on.is_empty() {
                on.push("TRUE".into());
            }
            format!("{} LEFT JOIN {right} ON {}", a.from, on.join(" AND "))
        } else {
            wheres.extend(b.wheres.iter().cloned());
            if on.is_empty() {
                format!("{} CROSS JOIN {right}", a.from)
            } else {
                format!("{} JOIN {right} ON {}", a.from, on.join(" AND "))
            }
        };
        let columns = join_heading(&a, &b, left);
        Ok(Query {
            columns,
            from,
            from_is_join: true,
            wheres,
            lineage_available: a.lineage_available && b.lineage_available,
            ..a
        })
    }

    fn condition(&mut self, q: &Query, cond: &mut Cond) -> Result<String, C::Error> {
        Ok(match cond {
            Cond::Bool(true) => "TRUE".into(),
            Cond::Bool(false) => "FALSE".into(),
            Cond::Sql(text) => {
                parenthesized(restriction::expression(text, &q.scope(false)).map_err(AlgebraError::from)?)
            }
            Cond::Key(map) => {
                let mut terms = Vec::new();
                for (name, value) in map.iter() {
                    // As in DataJoint, attributes the relation does not have are ignored.
                    let Some(c) = q.column(name) else { continue };
                    terms.push(match value {
                        Value::Null => format!("{} IS NULL", c.sql),
                        Value::String(s) => format!("{} = {}", c.sql, sql::literal(s)),
                        other => format!("{} = {}", c.sql, sql::literal(&other.to_string())),
                    });
                }
                if terms.is_empty() {
                    "TRUE".into()
                } else {
                    format!("({})", terms.join(" AND "))
                }
            }
            Cond::Or(items) => {
                let mut terms = Vec::new();
                for c in items.iter_mut() {
                    terms.push(self.condition(q, c)?);
                }
                if terms.iter().any(|t| t == "TRUE") {
                    "TRUE".into()
                } else {
                    terms.retain(|t| t != "FALSE");
                    if terms.is_empty() {
                        "FALSE".into()
                    } else {
                        format!("({})", terms.join(" OR "))
                    }
                }
            }
            Cond::And(items) => {
                let mut terms = Vec::new();
                for c in items.iter_mut() {
                    terms.push(self.condition(q, c)?);
                }
                terms.retain(|t| t != "TRUE");
                if terms.iter().any(|t| t == "FALSE") {
                    "FALSE".into()
                } else if terms.is_empty() {
                    "TRUE".into()
                } else {
                    format!("({})", terms.join(" AND "))
                }
            }
            Cond::Not(c) => match self.condition(q, c)?.as_str() {
                "TRUE" => "FALSE".into(),
                "FALSE" => "TRUE".into(),
                other => format!("(NOT {other})"),
            },
            Cond::Rel(other) => {
                let text = format!("… & {}", Cond::Rel(other.clone()).to_json());
                let r = self.rel(other)?;
                if r.universal.is_some() {
                    return Ok("TRUE".into());
                }
                let common = self.check_namesakes(q, &r, &text)?;
                let r = self.wrap(r);
                let mut wheres: Vec<String> = common
                    .iter()
                    .map(|n| {
                        format!("{} = {}", r.column(n).expect("common").sql, q.column(n).expect("common").sql)
                    })
                    .collect();
                wheres.extend(r.wheres.iter().cloned());
                let mut sub = format!("EXISTS (SELECT 1 FROM {}", r.from);
                if !wheres.is_empty() {
                    let _ = write!(sub, " WHERE {}", wheres.join(" AND "));
                }
                sub.push(')');
                sub
            }
        })
    }

    fn union(&mut self, a: Query, b: Query, text: &str) -> Result<Query, AlgebraError> {
        let (mut ka, mut kb) = (a.primary_key(), b.primary_key());
        ka.sort();
        kb.sort();
        if ka != kb {
            return Err(AlgebraError::new(
                Code::Incompatible,
                format!(
                    "the operands of a union must have the same primary key ({} vs {})",
                    ka.join(", "),
                    kb.join(", ")
                ),
                text.to_string(),
                "Project both operands onto the same key first, e.g. dj.proj(a) + dj.proj(b).",
            ));
        }
        let secondary = |q: &Query| -> Vec<String> {
            q.columns.iter().filter(|c| !c.attr.in_key).map(|c| c.attr.name.clone()).collect()
        };
        let (sa, sb) = (secondary(&a), secondary(&b));
        if let Some(shared) = sa.iter().find(|n| sb.contains(n)) {
            return Err(AlgebraError::new(
                Code::Incompatible,
                format!("the operands of a union must not share secondary attributes (\"{shared}\")"),
                text.to_string(),
                "Rename or drop it in one operand with dj.proj.",
            ));
        }
        let key = a.primary_key();
        let (a, b) = (self.subquery(a), self.subquery(b));
        let lineage_available = a.lineage_available && b.lineage_available;
        if sa.is_empty() && sb.is_empty() {
            let select = |q: &Query| {
                let cols: Vec<String> = key.iter().map(|k| q.column(k).expect("key").sql.clone()).collect();
                format!("SELECT {} FROM {}", cols.join(", "), q.from)
            };
            let alias = self.alias();
            return Ok(Query {
                columns: key
                    .iter()
                    .map(|k| Column {
                        attr: a.column(k).expect("key").attr.clone(),
                        sql: format!("{alias}.{}", sql::ident(k)),
                    })
                    .collect(),
                from: format!("({} UNION {}) AS {alias}", select(&a), select(&b)),
                lineage_available,
                ..a
            });
        }
        // Rows of either side, matched on the key: a full outer join.
        let on: Vec<String> = key
            .iter()
            .map(|k| format!("{} = {}", a.column(k).expect("key").sql, b.column(k).expect("key").sql))
            .collect();
        let mut columns: Vec<Column> = key
            .iter()
            .map(|k| Column {
                attr: a.column(k).expect("key").attr.clone(),
                sql: format!(
                    "COALESCE({}, {})",
                    a.column(k).expect("key").sql,
                    b.column(k).expect("key").sql
                ),
            })
            .collect();
        columns.extend(a.columns.iter().filter(|c| !c.attr.in_key).cloned());
        columns.extend(b.columns.iter().filter(|c| !c.attr.in_key).cloned());
        Ok(Query {
            columns,
            from: format!(
                "{} FULL JOIN {} ON {}",
                a.from,
                b.from,
                if on.is_empty() { "TRUE".to_string() } else { on.join(" AND ") }
            ),
            from_is_join: true,
            lineage_available,
            ..a
        })
    }

    fn proj(&mut self, q: Query, items: &[String], text: &str) -> Result<Query, AlgebraError> {
        let spec = ProjSpec::parse(items)?;
        let scope = q.scope(false);
        for name in spec.mentioned() {
            if q.column(name).is_none() {
                return Err(self.missing(name, &q, text));
            }
        }
        for name in &spec.excluded {
            if q.column(name).is_some_and(|c| c.attr.in_key) {
                return Err(AlgebraError::new(
                    Code::InvalidReference,
                    format!("cannot exclude primary-key attribute \"{name}\""),
                    format!("-{name}"),
                    "The primary key always stays; rename it with 'new_name = old_name' instead.",
                ));
            }
        }
        let renamed_sources: Vec<&str> = spec.renamed.iter().map(|(_, old)| old.as_str()).collect();
        let mut columns = Vec::new();
        let mut taken: Vec<String> = Vec::new();
        let take = |name: &str, taken: &mut Vec<String>| -> Result<(), AlgebraError> {
            if taken.iter().any(|t| t == name) {
                return Err(AlgebraError::new(
                    Code::DuplicateColumn,
                    format!("attribute \"{name}\" appears twice in the projection"),
                    name,
                    "Each attribute of a projection needs its own name.",
                ));
            }
            taken.push(name.to_string());
            Ok(())
        };
        for c in &q.columns {
            let name = c.attr.name.as_str();
            let keep = if c.attr.in_key {
                !renamed_sources.contains(&name)
            } else {
                (spec.all || spec.included.iter().any(|i| i == name))
                    && !spec.excluded.iter().any(|e| e == name)
                    && !(spec.all
                        && renamed_sources.contains(&name)
                        && !spec.included.iter().any(|i| i == name))
            };
            if keep {
                take(name, &mut taken)?;
                columns.push(c.clone());
            }
            for (new, old) in &spec.renamed {
                if old == name {
                    take(new, &mut taken)?;
                    columns.push(Column {
                        attr: Attribute { name: new.clone(), ..c.attr.clone() },
                        sql: c.sql.clone(),
                    });
                }
            }
            for (new, old) in &spec.copied {
                if old == name {
                    take(new, &mut taken)?;
                    columns.push(Column {
                        attr: Attribute { name: new.clone(), in_key: false, lineage: c.attr.lineage.clone() },
                        sql: c.sql.clone(),
                    });
                }
            }
        }
        for (new, expression) in &spec.computed {
            take(new, &mut taken)?;
            let sql = restriction::expression(expression, &scope)?;
            columns.push(Column {
                attr: Attribute { name: new.clone(), in_key: false, lineage: None },
                sql: parenthesized(sql),
            });
        }
        Ok(Query { columns, ..q })
    }

    fn aggr(
        &mut self,
        g: Query,
        r: Query,
        items: &[String],
        exclude_nonmatching: bool,
        text: &str,
    ) -> Result<Query, AlgebraError> {
        let spec = ProjSpec::parse(items)?;
        // GROUP BY a computed constant would read as a column position: group plain columns only.
        let by_reference = |q: &Query| q.columns.iter().all(Column::is_reference);
        let r = if by_reference(&r) { self.wrap(r) } else { self.subquery(r) };
        let g = if g.universal.is_some() || by_reference(&g) { g } else { self.subquery(g) };
        if let Some(attrs) = g.universal.clone() {
            if spec.computed.is_empty() {
                return Err(AlgebraError::new(
                    Code::Syntax,
                    "aggregation over dj.u(...) needs a computed attribute",
                    text.to_string(),
                    "Write dj.aggr(dj.u('a'), rel, 'n = count(*)'); dj.u('a') & rel lists the values of a.",
                ));
            }
            if spec.all
                || !spec.included.is_empty()
                || !spec.excluded.is_empty()
                || !spec.renamed.is_empty()
                || !spec.copied.is_empty()
            {
                return Err(AlgebraError::new(
                    Code::Syntax,
                    "aggregation over dj.u(...) takes computed attributes only",
                    text.to_string(),
                    "Write dj.aggr(dj.u('a'), rel, 'n = count(*)').",
                ));
            }
            let mut columns = Vec::new();
            for a in &attrs {
                let Some(c) = r.column(a) else { return Err(self.missing(a, &r, text)) };
                let mut c = c.clone();
                c.attr.in_key = true;
                columns.push(c);
            }
            let group: Vec<String> = columns.iter().map(|c| c.sql.clone()).collect();
            let scope = r.scope(true);
            for (new, expression) in &spec.computed {
                let sql = restriction::expression(expression, &scope)?;
                columns.push(Column {
                    attr: Attribute { name: new.clone(), in_key: false, lineage: None },
                    sql: parenthesized(sql),
                });
            }
            check_unique(&columns)?;
            return Ok(Query { columns, group_by: Some(group), ..r });
        }
        if !r.determines(&g) {
            let missing: Vec<String> =
                g.primary_key().into_iter().filter(|k| r.column(k).is_none()).collect();
            return Err(AlgebraError::new(
                Code::InvalidReference,
                format!("aggregation needs the aggregated relation to contain the group's primary key; missing: {}", missing.join(", ")),
                text.to_string(),
                "Join the aggregated relation with the tables that carry those attributes first.",
            ));
        }
        let key = g.primary_key();
        let joined = self.join(g.clone(), r, !exclude_nonmatching, text)?;
        let scope = joined.scope(true);
        // The group's key and the attributes asked for, computed over the joined rows.
        let mut columns: Vec<Column> =
            joined.columns.iter().filter(|c| key.contains(&c.attr.name)).cloned().collect();
        for c in &mut columns {
            c.attr.in_key = true;
        }
        let group_columns: Vec<String> = g.names();
        let mut grouped: Vec<String> = columns.iter().map(|c| c.sql.clone()).collect();
        for name in spec.excluded.iter().chain(spec.renamed.iter().map(|(_, old)| old)) {
            if key.contains(name) {
                return Err(AlgebraError::new(
                    Code::InvalidReference,
                    format!("an aggregation keeps the group's primary key: \"{name}\" cannot be renamed or excluded here"),
                    name.clone(),
                    "Rename it with dj.proj before or after aggregating.",
                ));
            }
        }
        for name in spec.mentioned() {
            if !group_columns.iter().any(|g| g == name) {
                return Err(AlgebraError::new(
                    Code::UndefinedColumn,
                    format!("\"{name}\" is not an attribute of the grouping relation"),
                    name,
                    "Attributes of the aggregated relation enter the result through aggregate functions, e.g. 'mean_rate = avg(rate)'.",
                ));
            }
        }
        for c in &joined.columns {
            if c.attr.in_key && key.contains(&c.attr.name) {
                continue;
            }
            if !group_columns.contains(&c.attr.name) {
                continue;
            }
            let name = &c.attr.name;
            if (spec.all || spec.included.contains(name)) && !spec.excluded.contains(name) {
                grouped.push(c.sql.clone());
                columns
                    .push(Column { attr: Attribute { in_key: false, ..c.attr.clone() }, sql: c.sql.clone() });
            }
            for (new, old) in spec.renamed.iter().chain(spec.copied.iter()) {
                if old == name {
                    grouped.push(c.sql.clone());
                    columns.push(Column {
                        attr: Attribute { name: new.clone(), in_key: false, ..c.attr.clone() },
                        sql: c.sql.clone(),
                    });
                }
            }
        }
        for (new, expression) in &spec.computed {
            let sql = restriction::expression(expression, &scope)?;
            columns.push(Column {
                attr: Attribute { name: new.clone(), in_key: false, lineage: None },
                sql: parenthesized(sql),
            });
        }
        check_unique(&columns)?;
        Ok(Query { columns, group_by: Some(grouped), ..joined })
    }
}

fn check_unique(columns: &[Column]) -> Result<(), AlgebraError> {
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|d| d.attr.name == c.attr.name) {
            return Err(AlgebraError::new(
                Code::DuplicateColumn,
                format!("attribute \"{}\" appears twice in the result", c.attr.name),
                c.attr.name.clone(),
                "Give the computed attribute another name.",
            ));
        }
    }
    Ok(())
}

/// The heading of a join, by datajoint-python's rules: when one operand determines the other,
/// its key is the result's key and its attributes come first; otherwise the key is the union.
fn join_heading(a: &Query, b: &Query, left: bool) -> Vec<Column> {
    let mut out: Vec<Column> = Vec::new();
    let mut push = |c: &Column, in_key: bool, out: &mut Vec<Column>| {
        if !out.iter().any(|o| o.attr.name == c.attr.name) {
            out.push(Column { attr: Attribute { in_key, ..c.attr.clone() }, sql: c.sql.clone() });
        }
    };
    let dependent = |x: &Query,
                     y: &Query,
                     out: &mut Vec<Column>,
                     push: &mut dyn FnMut(&Column, bool, &mut Vec<Column>)| {
        for c in x.columns.iter().filter(|c| c.attr.in_key) {
            push(c, true, out);
        }
        for c in x.columns.iter().filter(|c| !c.attr.in_key) {
            push(c, false, out);
        }
        for c in &y.columns {
            push(c, false, out);
        }
    };
    if left || a.determines(b) {
        dependent(a, b, &mut out, &mut push);
    } else if b.determines(a) {
        dependent(b, a, &mut out, &mut push);
    } else {
        let bk = b.primary_key();
        let ak = a.primary_key();
        for c in a.columns.iter().filter(|c| c.attr.in_key) {
            push(c, true, &mut out);
        }
        for c in b.columns.iter().filter(|c| c.attr.in_key) {
            push(c, true, &mut out);
        }
        for c in a.columns.iter().filter(|c| !c.attr.in_key && !bk.contains(&c.attr.name)) {
            push(c, false, &mut out);
        }
        for c in b.columns.iter().filter(|c| !c.attr.in_key && !ak.contains(&c.attr.name)) {
            push(c, false, &mut out);
        }
    }
    out
}

/// The items of a projection: `attr`, `...`, `-attr`, `new = old`, `new = (old)`, `new = expr`.
#[derive(Default, Debug)]
struct ProjSpec {
    all: bool,
    included: Vec<String>,
    excluded: Vec<String>,
    renamed: Vec<(String, String)>,
    copied: Vec<(String, String)>,
    computed: Vec<(String, String)>,
}

impl ProjSpec {
    fn parse(items: &[String]) -> Result<ProjSpec, AlgebraError> {
        let mut spec = ProjSpec::default();
        for item in items {
            let trimmed = item.trim();
            if trimmed == "..." {
                spec.all = true;
            } else if let Some(name) = trimmed.strip_prefix('-') {
                spec.excluded.push(attribute_name(name.trim(), item)?);
            } else if let Some((new, rhs)) = named_item(trimmed) {
                let new = attribute_name(new, item)?;
                let rhs = rhs.trim();
                let inner = rhs.strip_prefix('(').and_then(|r| r.strip_suffix(')')).map(str::trim);
                if valid_name(rhs) && !is_constant(rhs) {
                    spec.renamed.push((new, rhs.to_string()));
                } else if let Some(old) = inner.filter(|i| valid_name(i) && !is_constant(i)) {
                    spec.copied.push((new, old.to_string()));
                } else {
                    spec.computed.push((new, rhs.to_string()));
                }
            } else {
                spec.included.push(attribute_name(trimmed, item)?);
            }
        }
        Ok(spec)
    }

    /// Existing attributes the items name.
    fn mentioned(&self) -> Vec<&String> {
        self.included
            .iter()
            .chain(self.renamed.iter().map(|(_, o)| o))
            .chain(self.copied.iter().map(|(_, o)| o))
            .collect()
    }
}

fn is_constant(word: &str) -> bool {
    matches!(word, "null" | "true" | "false" | "current_date" | "current_timestamp")
}

/// `name = rest` (but not `name >= …`, `name <= …`, `name <> …`).
fn named_item(item: &str) -> Option<(&str, &str)> {
    let eq = item.find('=')?;
    let (lhs, rhs) = (item[..eq].trim(), &item[eq + 1..]);
    (!lhs.is_empty() && lhs.chars().all(|c| c.is_alphanumeric() || c == '_') && !rhs.starts_with('='))
        .then_some((lhs, rhs))
}

fn attribute_name(name: &str, item: &str) -> Result<String, AlgebraError> {
    if valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(AlgebraError::new(
            Code::InvalidName,
            format!("\"{name}\" is not an attribute name"),
            item,
            "Name attributes in lowercase (letters, digits, _); compute values with 'new_name = expression'.",
        ))
    }
}

/// `ORDER BY` items over `columns` (attribute, SQL): `KEY` (the primary key), or `attr [ASC|DESC]
/// [NULLS FIRST|LAST]`.
pub fn order_by_attributes(heading: &[Attribute], items: &[String]) -> Result<Vec<String>, AlgebraError> {
    order_by(&heading.iter().map(|a| (a.clone(), sql::ident(&a.name))).collect::<Vec<_>>(), items)
}

fn order_by(columns: &[(Attribute, String)], items: &[String]) -> Result<Vec<String>, AlgebraError> {
    let mut out = Vec::new();
    for item in items {
        let words: Vec<String> = item.split_whitespace().map(str::to_lowercase).collect();
        let Some(first) = words.first() else { continue };
        let direction = match &words[1..] {
            [] => "",
            [d] if d == "asc" => " ASC",
            [d] if d == "desc" => " DESC",
            [d, n, w] if n == "nulls" && (w == "first" || w == "last") && (d == "asc" || d == "desc") => {
                if d == "asc" {
                    if w == "first" {
                        " ASC NULLS FIRST"
                    } else {
                        " ASC NULLS LAST"
                    }
                } else if w == "first" {
                    " DESC NULLS FIRST"
                } else {
                    " DESC NULLS LAST"
                }
            }
            _ => {
                return Err(AlgebraError::new(
                    Code::Syntax,
                    format!("cannot order by \"{item}\""),
                    item.clone(),
                    "Order by attributes: 'KEY', 'attr', 'attr DESC', 'attr ASC NULLS LAST'.",
                ))
            }
        };
        if first == "key" && item.trim().len() == 3 {
            out.extend(columns.iter().filter(|(a, _)| a.in_key).map(|(_, s)| s.clone()));
            continue;
        }
        let Some((_, sql)) = columns.iter().find(|(a, _)| a.name == *first) else {
            return Err(AlgebraError::new(
                Code::UndefinedColumn,
                format!("cannot order by \"{first}\": not an attribute"),
                item.clone(),
                format!(
                    "Its attributes are: {}.",
                    columns.iter().map(|(a, _)| a.name.clone()).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        out.push(format!("{sql}{direction}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small pipeline: Subject → Session → Scan; Session.rig is a secondary foreign key to Rig;
    /// Other has a `session_idx` of its own lineage.
    struct Lab;

    fn attr(name: &str, in_key: bool, lineage: Option<&str>) -> Attribute {
        Attribute { name: name.into(), in_key, lineage: lineage.map(String::from) }
    }

    impl Catalog for Lab {
        type Error = AlgebraError;
        fn table(&mut self, name: &str) -> Result<TableInfo, AlgebraError> {
            let (table, attributes) = match name {
                "lab.Subject" | "lab.subject" => (
                    "subject",
                    vec![
                        attr("subject_id", true, Some("lab.subject.subject_id")),
                        attr("species", false, None),
                    ],
                ),
                "lab.Session" | "lab.session" => (
                    "session",
                    vec![
                        attr("subject_id", true, Some("lab.subject.subject_id")),
                        attr("session_idx", true, Some("lab.session.session_idx")),
                        attr("rig", false, Some("lab.rig.rig")),
                        attr("duration", false, None),
                    ],
                ),
                "lab.Scan" => (
                    "scan",
                    vec![
                        attr("subject_id", true, Some("lab.subject.subject_id")),
                        attr("session_idx", true, Some("lab.session.session_idx")),
                        attr("scan_idx", true, Some("lab.scan.scan_idx")),
                        attr("depth", false, None),
                    ],
                ),
                "lab.Rig" => ("rig", vec![attr("rig", true, Some("lab.rig.rig")), attr("room", false, None)]),
                "lab.Other" => ("other", vec![attr("session_idx", true, Some("lab.other.session_idx"))]),
                _ => {
                    return Err(AlgebraError::new(
                        Code::UndefinedTable,
                        format!("table {name} does not exist"),
                        name,
                        "",
                    ))
                }
            };
            Ok(TableInfo {
                display: format!("lab.{}", crate::naming::class_name_of(table)),
                schema: "lab".into(),
                table: table.into(),
                attributes,
                lineage_available: true,
            })
        }
    }

    fn compiled(text: &str) -> Result<Compiled, AlgebraError> {
        let mut rel = parse(text)?;
        compile(&mut rel, &mut Lab)
    }

    fn key(text: &str) -> Vec<String> {
        compiled(text).unwrap().primary_key()
    }

    #[test]
    fn text_round_trips() {
        for text in [
            "(lab.Session * lab.Scan) & 'depth > 100'",
            "lab.Session * lab.Scan * lab.Subject",
            "lab.Session & {\"subject_id\":1} & 'duration > 2'",
            "lab.Session - [{\"subject_id\":1}, 'duration < 1']",
            "lab.Session & not(lab.Scan & 'depth > 3')",
            "proj(lab.Session, 'rig', 'idx = session_idx', 'x = duration * 2')",
            "aggr(lab.Subject, lab.Session, 'n = count(*)', exclude_nonmatching=true)",
            "top(lab.Scan, 10, 'depth DESC', offset=5)",
            "u('rig') & lab.Session",
            "proj(lab.Session) + proj(lab.Scan, 'x = scan_idx')",
            "extend(lab.Session, lab.Rig)",
            "lab.Session & and('duration > 1', true)",
            "lab.Session & 'it''s'",
        ] {
            let rel = parse(text).unwrap();
            assert_eq!(rel.to_string(), text, "prints back as written");
            assert_eq!(parse(&rel.to_string()).unwrap(), rel);
        }
        // Python's precedence: * before + and -, & last.
        assert_eq!(parse("lab.A * lab.B & 'x'").unwrap().to_string(), "(lab.A * lab.B) & 'x'");
        assert_eq!(parse("lab.A - lab.B * lab.C").unwrap().to_string(), "lab.A - (lab.B * lab.C)");
    }

    #[test]
    fn bad_text_is_a_syntax_error_with_the_fragment() {
        for (text, fragment) in [
            ("lab.Session &", ""),
            ("lab.Session ; drop table x", "; drop table x"),
            ("'depth > 1' & lab.Session", "\"depth > 1\""),
            ("proj(lab.Session, 3)", ")"),
            ("frob(lab.Session)", "frob(lab.Session)"),
            ("lab.Session & {\"a\": ", "{\"a\": "),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.fragment.starts_with(fragment) || fragment.is_empty(), "{text}: {e:?}");
        }
        assert_eq!(parse("'x' * lab.S").unwrap_err().code, Code::WrongOperand);
    }

    #[test]
    fn join_key_follows_dependence() {
        assert_eq!(key("lab.Session * lab.Scan"), ["subject_id", "session_idx", "scan_idx"]);
        assert_eq!(key("lab.Scan * lab.Session"), ["subject_id", "session_idx", "scan_idx"]);
        // Session determines Rig (rig is an attribute of Session).
        assert_eq!(key("lab.Session * lab.Rig"), ["subject_id", "session_idx"]);
        assert_eq!(key("lab.Subject * lab.Rig"), ["subject_id", "rig"]);
        // Scan determines Session: Scan's attributes come first (as in datajoint-python).
        let c = compiled("lab.Session * lab.Scan").unwrap();
        assert_eq!(
            c.sql,
            "SELECT t2.\"subject_id\", t2.\"session_idx\", t2.\"scan_idx\", t2.\"depth\", t1.\"rig\", t1.\"duration\" \
             FROM \"lab\".\"session\" AS t1 JOIN \"lab\".\"scan\" AS t2 ON t1.\"subject_id\" = t2.\"subject_id\" \
             AND t1.\"session_idx\" = t2.\"session_idx\""
        );
    }

    #[test]
    fn lineage_clash_is_an_error_with_a_rename_hint() {
        let e = compiled("lab.Session * lab.Other").unwrap_err();
        assert_eq!(e.code, Code::LineageClash);
        assert!(e.message.contains("session_idx"), "{e:?}");
        assert!(e.hint.contains("dj.proj"));
        // Secondary attributes without lineage never match.
        let e = compiled("lab.Session * proj(lab.Scan, 'duration = depth')").unwrap_err();
        assert_eq!(e.code, Code::LineageClash);
        // Renaming resolves it.
        assert_eq!(
            key("lab.Session * proj(lab.Other, 'other_idx = session_idx')"),
            ["subject_id", "session_idx", "other_idx"]
        );
        assert_eq!(compiled("lab.Session & lab.Other").unwrap_err().code, Code::LineageClash);
    }

    #[test]
    fn restrictions_flatten_into_one_select() {
        let c = compiled("(lab.Session * lab.Scan) & 'depth > 100' & {\"subject_id\": 3}").unwrap();
        assert_eq!(c.sql.matches("SELECT").count(), 1, "{}", c.sql);
        assert!(c.sql.ends_with("WHERE (t2.\"depth\" > 100) AND (t2.\"subject_id\" = '3')"), "{}", c.sql);
        let c = compiled("lab.Session - lab.Scan").unwrap();
        assert!(c.sql.contains("WHERE (NOT EXISTS (SELECT 1 FROM \"lab\".\"scan\" AS t2 WHERE t2.\"subject_id\" = t1.\"subject_id\""), "{}", c.sql);
        // Keys ignore attributes the relation does not have; an empty key matches everything.
        let c = compiled("lab.Subject & {\"scan_idx\": 1}").unwrap();
        assert!(!c.sql.contains("WHERE"));
        assert!(compiled("lab.Subject & []").unwrap().sql.ends_with("WHERE FALSE"));
        // A renamed attribute is restricted through its source column.
        let c = compiled("proj(lab.Scan, 'd = depth') & 'd > 1'").unwrap();
        assert!(c.sql.ends_with("WHERE (t1.\"depth\" > 1)"), "{}", c.sql);
        assert_eq!(compiled("lab.Scan & 'nope > 1'").unwrap_err().code, Code::UndefinedColumn);
        assert_eq!(compiled("lab.Scan & 'depth > 1; drop table x'").unwrap_err().code, Code::Syntax);
    }

    #[test]
    fn projection_keeps_the_key() {
        let c = compiled("proj(lab.Session, 'idx = session_idx', 'x = duration * 2')").unwrap();
        let names: Vec<&str> = c.heading.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["subject_id", "idx", "x"]);
        assert_eq!(c.primary_key(), ["subject_id", "idx"]);
        assert_eq!(c.heading[1].lineage.as_deref(), Some("lab.session.session_idx"));
        assert_eq!(c.heading[2].lineage, None);
        let names: Vec<String> = compiled("proj(lab.Session, '...', '-rig')")
            .unwrap()
            .heading
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["subject_id", "session_idx", "duration"]);
        assert_eq!(compiled("proj(lab.Session, '-subject_id')").unwrap_err().code, Code::InvalidReference);
        assert_eq!(compiled("proj(lab.Session, 'nope')").unwrap_err().code, Code::UndefinedColumn);
        assert_eq!(
            compiled("proj(lab.Session, 'rig', 'rig = duration')").unwrap_err().code,
            Code::DuplicateColumn
        );
        assert_eq!(compiled("proj(lab.Session, 'x = pg_sleep(1)')").unwrap_err().code, Code::Syntax);
        assert_eq!(compiled("proj(lab.Session, 'x = count(*)')").unwrap_err().code, Code::Syntax);
    }

    #[test]
    fn aggregation_groups_by_the_group_key() {
        let c = compiled("aggr(lab.Subject, lab.Session, 'n = count(session_idx)', 'avg_d = avg(duration)')")
            .unwrap();
        assert_eq!(c.primary_key(), ["subject_id"]);
        assert!(c.sql.contains("LEFT JOIN"), "{}", c.sql);
        assert!(c.sql.contains("GROUP BY t1.\"subject_id\""), "{}", c.sql);
        let c = compiled("aggr(lab.Subject, lab.Session, '...', 'n = count(*)', exclude_nonmatching=true)")
            .unwrap();
        assert!(!c.sql.contains("LEFT JOIN"));
        assert_eq!(
            c.heading.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["subject_id", "species", "n"]
        );
        // Restricting an aggregation wraps it.
        let c = compiled("aggr(lab.Subject, lab.Session, 'n = count(*)') & 'n > 2'").unwrap();
        assert!(c.sql.ends_with("WHERE (t3.\"n\" > 2)"), "{}", c.sql);
        assert_eq!(
            compiled("aggr(lab.Session, lab.Subject, 'n = count(*)')").unwrap_err().code,
            Code::InvalidReference
        );
        let c = compiled("aggr(u('rig'), lab.Session, 'n = count(*)')").unwrap();
        assert_eq!(c.primary_key(), ["rig"]);
        assert!(c.sql.contains("GROUP BY t1.\"rig\""));
        let c = compiled("aggr(u(), lab.Session, 'n = count(*)')").unwrap();
        assert!(c.primary_key().is_empty() && !c.sql.contains("GROUP BY"));
    }

    #[test]
    fn universal_sets() {
        let c = compiled("u('rig') & lab.Session").unwrap();
        assert_eq!(c.sql, "SELECT DISTINCT t1.\"rig\" FROM \"lab\".\"session\" AS t1");
        assert_eq!(c.primary_key(), ["rig"]);
        for text in [
            "u('rig') * lab.Session",
            "lab.Session * u('rig')",
            "u('rig') - lab.Session",
            "u('rig')",
            "u('rig') & 'rig > 1'",
            "u('x') & lab.Session",
        ] {
            assert!(compiled(text).is_err(), "{text}");
        }
        assert_eq!(compiled("u('rig') - lab.Session").unwrap_err().code, Code::NotSupported);
    }

    #[test]
    fn union_needs_the_same_key() {
        let c = compiled("proj(lab.Session & 'duration > 1') + proj(lab.Session & 'duration < 0')").unwrap();
        assert!(c.sql.contains(" UNION "), "{}", c.sql);
        let c = compiled("proj(lab.Session, 'rig') + proj(lab.Session, 'duration')").unwrap();
        assert!(c.sql.contains("FULL JOIN"), "{}", c.sql);
        assert_eq!(compiled("lab.Session + lab.Scan").unwrap_err().code, Code::Incompatible);
        assert_eq!(compiled("lab.Session + lab.Session").unwrap_err().code, Code::Incompatible);
    }

    #[test]
    fn top_orders_and_limits() {
        let c = compiled("top(lab.Scan, 3, 'depth DESC')").unwrap();
        assert!(c.sql.ends_with("ORDER BY t1.\"depth\" DESC LIMIT 3"), "{}", c.sql);
        assert_eq!(c.order, ["\"depth\" DESC"]);
        let c = compiled("top(lab.Scan, 3, 'KEY') & 'depth > 1'").unwrap();
        assert!(c.sql.starts_with("SELECT t2.") && c.sql.contains("LIMIT 3) AS t2"), "{}", c.sql);
        assert_eq!(compiled("top(lab.Scan, 3, 'nope')").unwrap_err().code, Code::UndefinedColumn);
        assert_eq!(compiled("top(lab.Scan, 3, 'depth; drop')").unwrap_err().code, Code::Syntax);
    }

    #[test]
    fn extend_keeps_every_row() {
        let c = compiled("extend(lab.Session, lab.Rig & 'room > 1')").unwrap();
        assert!(
            c.sql
                .contains("LEFT JOIN \"lab\".\"rig\" AS t2 ON t1.\"rig\" = t2.\"rig\" AND (t2.\"room\" > 1)"),
            "{}",
            c.sql
        );
        assert_eq!(c.primary_key(), ["subject_id", "session_idx"]);
        assert_eq!(compiled("extend(lab.Subject, lab.Session)").unwrap_err().code, Code::InvalidReference);
    }

    #[test]
    fn names_are_canonical_after_compiling() {
        let mut rel = parse("lab.subject * lab.session").unwrap();
        compile(&mut rel, &mut Lab).unwrap();
        assert_eq!(rel.to_string(), "lab.Subject * lab.Session");
        assert_eq!(compiled("lab.Nope").unwrap_err().code, Code::UndefinedTable);
    }

    #[test]
    fn deep_or_long_expressions_are_refused_not_a_stack_overflow() {
        let deep = format!("{}lab.Subject{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(parse(&deep).unwrap_err().code, Code::TooComplex);
        let long = vec!["lab.Subject"; 100_000].join(" * ");
        assert_eq!(parse(&long).unwrap_err().code, Code::TooComplex);
        let lists = format!("lab.Subject & {}'x'{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(&lists).unwrap_err().code, Code::TooComplex);
        let fine = vec!["lab.Subject"; 200].join(" * ");
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn combined_conditions_keep_their_parentheses() {
        let c = compiled("lab.Session & ['duration < 1', 'duration > 5'] & {\"subject_id\": 1}").unwrap();
        assert!(
            c.sql.ends_with(
                "WHERE ((t1.\"duration\" < 1) OR (t1.\"duration\" > 5)) AND (t1.\"subject_id\" = '1')"
            ),
            "{}",
            c.sql
        );
        let c = compiled("lab.Session - ['duration < 1', 'duration > 5']").unwrap();
        assert!(c.sql.ends_with("WHERE (NOT ((t1.\"duration\" < 1) OR (t1.\"duration\" > 5)))"), "{}", c.sql);
        let c = compiled("lab.Session - {\"session_idx\": 2, \"subject_id\": 1}").unwrap();
        assert!(
            c.sql.ends_with("WHERE (NOT (t1.\"session_idx\" = '2' AND t1.\"subject_id\" = '1'))"),
            "{}",
            c.sql
        );
    }

    #[test]
    fn outer_joins_compute_the_right_side_before_joining() {
        // Where no rig matches, c must be NULL, not 1.
        let c = compiled("extend(lab.Session, proj(lab.Rig, 'c = 1'))").unwrap();
        assert!(
            c.sql.contains("LEFT JOIN (SELECT t2.\"rig\", (1) AS \"c\" FROM \"lab\".\"rig\" AS t2) AS t3"),
            "{}",
            c.sql
        );
        let c = compiled("aggr(lab.Subject, proj(lab.Session, 'one = 1'), 'n = count(one)')").unwrap();
        assert!(c.sql.contains("LEFT JOIN (SELECT"), "{}", c.sql);
    }

    #[test]
    fn grouping_and_ordering_by_computed_columns_go_through_a_subquery() {
        // GROUP BY (1) / ORDER BY (1) would mean "the first column".
        let c = compiled("aggr(proj(lab.Subject, 'c = 1'), lab.Session, '...', 'n = count(session_idx)')")
            .unwrap();
        assert!(c.sql.ends_with("GROUP BY t3.\"subject_id\", t3.\"c\""), "{}", c.sql);
        let c = compiled("top(proj(lab.Subject, 'c = 1'), 2, 'c')").unwrap();
        assert!(!c.sql.contains("ORDER BY (1)"), "{}", c.sql);
    }

    #[test]
    fn more_refusals() {
        assert_eq!(compiled("aggr(u(), lab.Session)").unwrap_err().code, Code::Syntax);
        assert_eq!(compiled("u('rig', 'rig') & lab.Session").unwrap_err().code, Code::DuplicateColumn);
        assert_eq!(
            compiled("aggr(lab.Subject, lab.Session, 'sid = subject_id', 'n = count(*)')").unwrap_err().code,
            Code::InvalidReference
        );
        let c = compiled("aggr(lab.Subject, lab.Session, 's = (species)', 'n = count(*)')").unwrap();
        assert!(c.sql.contains("GROUP BY t1.\"subject_id\", t1.\"species\""), "{}", c.sql);
        let c =
            compiled("aggr(u(), lab.Session, 'n = count(*)') + aggr(u(), lab.Scan, 'm = count(*)')").unwrap();
        assert!(c.sql.contains("FULL JOIN") && c.sql.contains(" ON TRUE"), "{}", c.sql);
        let mut nested = "lab.Subject".to_string();
        for _ in 0..6 {
            nested = format!("lab.Subject & {}", serde_json::json!({ "$rel": nested }));
        }
        assert_eq!(parse(&nested).unwrap_err().code, Code::TooComplex);
    }

    #[test]
    fn json_conditions() {
        let v: Value =
            serde_json::from_str(r#"[{"a": 1}, {"$not": "x > 1"}, {"$and": [true]}, {"$rel": "lab.Scan"}]"#)
                .unwrap();
        let c = Cond::from_json(&v).unwrap();
        assert_eq!(Cond::from_json(&c.to_json()).unwrap(), c);
        assert!(Cond::from_json(&serde_json::json!({"$drop": 1})).is_err());
        assert!(Cond::from_json(&serde_json::json!(3)).is_err());
    }
}
