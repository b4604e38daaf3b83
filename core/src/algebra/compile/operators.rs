//! The operators' compilation: namesake checks, joins, conditions, union, projection,
//! aggregation, and the headings they produce.

use std::fmt::Write as _;

use super::{parenthesized, valid_name, Column, Compiler, Query};
use crate::algebra::{AlgebraError, Attribute, Catalog, Code, Cond, RENAME_HINT};
use crate::restriction::{self, UnknownAttributes};
use crate::sql;

impl<C: Catalog> Compiler<'_, C> {
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

    pub(super) fn join(&mut self, a: Query, b: Query, left: bool, text: &str) -> Result<Query, AlgebraError> {
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

    pub(super) fn condition(&mut self, q: &Query, cond: &mut Cond) -> Result<String, C::Error> {
        Ok(match cond {
            Cond::Bool(true) => "TRUE".into(),
            Cond::Bool(false) => "FALSE".into(),
            Cond::Sql(text) => {
                parenthesized(restriction::expression(text, &q.scope(false)).map_err(AlgebraError::from)?)
            }
            // As in DataJoint, attributes the relation does not have are ignored.
            Cond::Key(map) => {
                restriction::json_key(map, |n| q.column(n).map(|c| c.sql.clone()), UnknownAttributes::Ignore)
                    .unwrap_or_else(|_| unreachable!("ignoring never refuses"))
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

    pub(super) fn union(&mut self, a: Query, b: Query, text: &str) -> Result<Query, AlgebraError> {
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

    pub(super) fn proj(&mut self, q: Query, items: &[String], text: &str) -> Result<Query, AlgebraError> {
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

    pub(super) fn aggr(
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

pub(super) fn check_unique(columns: &[Column]) -> Result<(), AlgebraError> {
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
pub(super) fn join_heading(a: &Query, b: &Query, left: bool) -> Vec<Column> {
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
pub(super) struct ProjSpec {
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

pub(super) fn is_constant(word: &str) -> bool {
    matches!(word, "null" | "true" | "false" | "current_date" | "current_timestamp")
}

/// `name = rest` (but not `name >= …`, `name <= …`, `name <> …`).
pub(super) fn named_item(item: &str) -> Option<(&str, &str)> {
    let eq = item.find('=')?;
    let (lhs, rhs) = (item[..eq].trim(), &item[eq + 1..]);
    (!lhs.is_empty() && lhs.chars().all(|c| c.is_alphanumeric() || c == '_') && !rhs.starts_with('='))
        .then_some((lhs, rhs))
}

pub(super) fn attribute_name(name: &str, item: &str) -> Result<String, AlgebraError> {
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
