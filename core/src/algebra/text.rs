//! The text form of expressions: what `Display` prints, `parse` reads back.

use std::fmt;

use serde_json::Value;

use super::{Cond, Rel};

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
