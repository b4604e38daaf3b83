//! Compiling an expression to one SQL query over the catalog's tables: headings, keys,
//! lineage checks, and SQL built from checked pieces.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::order::{order_by, order_by_attributes};
use super::{AlgebraError, Attribute, Catalog, Code, Cond, Rel, TableInfo};
use crate::restriction::Scope;
use crate::sql;

mod operators;

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

pub(super) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Checked expressions come back with every compound already in parentheses.
pub(super) fn parenthesized(sql: String) -> String {
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
}
