//! Reading expressions: a lexer and a recursive-descent parser with depth and size limits.

use serde_json::{Map, Value};

use super::{AlgebraError, Code, Cond, Rel};
use crate::sql;

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
