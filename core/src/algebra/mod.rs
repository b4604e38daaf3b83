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

use std::fmt;

use serde_json::{Map, Value};

use crate::restriction::{self, RestrictionKind};

mod compile;
mod order;
mod parse;
#[cfg(test)]
mod tests;
mod text;

pub use compile::{compile, Compiled};
pub use order::order_by_attributes;
pub use parse::parse;

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
