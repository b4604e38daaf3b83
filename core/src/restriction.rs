//! Restriction conditions written by users (`'depth > 100 and quality = ''good'''`): parsed with
//! sqlparser, checked, and re-emitted from the syntax tree, so that no user text reaches
//! PostgreSQL except as the condition it parses to.
//!
//! Allowed: the attributes of the restricted table, literals, comparison, boolean and arithmetic
//! operators, IS [NOT] NULL, [NOT] IN (list), BETWEEN, [I]LIKE, casts, and a short list of
//! side-effect-free functions. Refused: subqueries, other tables' columns, any other function,
//! comments, and anything after the condition.

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    InTarget, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::sql;

/// Functions a condition may call: deterministic, no side effects, no access to other data.
const FUNCTIONS: &[&str] = &[
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sqrt",
    "power",
    "mod",
    "sign",
    "ln",
    "log",
    "exp",
    "lower",
    "upper",
    "length",
    "char_length",
    "substr",
    "substring",
    "left",
    "right",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "strpos",
    "starts_with",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "date_trunc",
    "date_part",
    "extract",
    "make_date",
    "to_char",
    "to_date",
    "to_timestamp",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestrictionError {
    pub kind: RestrictionKind,
    pub message: String,
    /// The offending fragment of the condition.
    pub fragment: String,
    pub hint: String,
}

/// What is wrong with a condition, for callers that map it to a SQLSTATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestrictionKind {
    /// Not one expression of the allowed forms.
    Syntax,
    /// It names something that is not an attribute in scope.
    UnknownAttribute,
    /// More tokens than a condition may have.
    TooLong,
}

fn refuse(message: impl Into<String>, fragment: impl Into<String>, hint: &str) -> RestrictionError {
    RestrictionError {
        kind: RestrictionKind::Syntax,
        message: message.into(),
        fragment: fragment.into(),
        hint: hint.to_string(),
    }
}

const HINT: &str = "Write a condition on the table's attributes, e.g. 'depth > 100 AND quality = ''good'''.";

/// The most tokens a condition may have.
const MAX_TOKENS: usize = 5000;

/// Aggregate functions an aggregation's computed attribute may call (`count(*)`,
/// `avg(rate)`, `count(DISTINCT x)`).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bool_and",
    "bool_or",
    "every",
];

/// What an expression may name and what each name stands for in SQL: an attribute's column
/// (`t1."depth"`) or, for an attribute computed earlier, its parenthesized expression.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub columns: Vec<(String, String)>,
    /// Whether aggregate functions are allowed (an aggregation's computed attributes).
    pub aggregates: bool,
}

impl Scope {
    /// Attributes that are plain columns of the same name.
    pub fn plain(attributes: &[String]) -> Scope {
        Scope { columns: attributes.iter().map(|a| (a.clone(), sql::ident(a))).collect(), aggregates: false }
    }

    fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Parses and checks `condition` against the table's attributes; returns it re-emitted from the
/// syntax tree.
pub fn condition(condition: &str, attributes: &[String]) -> Result<String, RestrictionError> {
    expression(condition, &Scope::plain(attributes))
}

/// Parses and checks a condition or computed expression against `scope`; returns it re-emitted
/// from the syntax tree, with every attribute replaced by its SQL from the scope.
pub fn expression(condition: &str, scope: &Scope) -> Result<String, RestrictionError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, condition)
        .tokenize()
        .map_err(|e| refuse(format!("cannot read the condition: {e}"), condition, HINT))?;
    // sqlparser builds `a AND b AND …` and `1 + 1 + …` iteratively into a left-deep tree that
    // checking it (and dropping it) walks recursively: bound its size, so no condition can
    // exhaust the backend's stack.
    let significant = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).count();
    if significant > MAX_TOKENS {
        return Err(RestrictionError {
            kind: RestrictionKind::TooLong,
            ..refuse(
                format!("the condition is too long ({significant} tokens; at most {MAX_TOKENS})"),
                condition.chars().take(40).collect::<String>(),
                "Split it, or restrict by a relation (a semijoin) instead of listing values.",
            )
        });
    }
    for token in &tokens {
        match token {
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => {
                return Err(refuse("comments are not allowed in a condition", condition, HINT))
            }
            Token::SemiColon => {
                return Err(refuse("a condition is one expression: ';' is not allowed", ";", HINT))
            }
            _ => {}
        }
    }
    let mut parser = Parser::new(&dialect).with_tokens(tokens);
    let expr = parser
        .parse_expr()
        .map_err(|e| refuse(format!("the condition does not parse: {e}"), condition, HINT))?;
    if parser.peek_token().token != Token::EOF {
        return Err(refuse(
            "unexpected text after the condition",
            parser.peek_token().to_string(),
            "A restriction is one condition; combine several with AND / OR.",
        ));
    }
    emit(&expr, scope)
}

/// Checks `expr` and writes it as SQL. Nothing of the parsed text is printed by sqlparser:
/// attributes go through our identifier quoting, strings through our literal quoting, numbers are
/// re-validated, and operators, casts and functions come from fixed lists.
fn emit(expr: &Expr, scope: &Scope) -> Result<String, RestrictionError> {
    let e = |x: &Expr| emit(x, scope);
    Ok(match expr {
        Expr::Identifier(ident) => {
            let name =
                if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
            match scope.columns.iter().find(|(a, _)| *a == name) {
                Some((_, column)) => column.clone(),
                None => {
                    return Err(RestrictionError {
                        kind: RestrictionKind::UnknownAttribute,
                        ..refuse(
                            format!("\"{name}\" is not an attribute of the table"),
                            name,
                            &format!("Its attributes are: {}.", scope.names().join(", ")),
                        )
                    })
                }
            }
        }
        Expr::Value(v) => literal(&v.value)?,
        Expr::TypedString(t) => {
            let Value::SingleQuotedString(text) = &t.value.value else {
                return Err(refuse("only date and time literals may be typed", expr.to_string(), HINT));
            };
            match cast_type(&t.data_type).filter(|ty| TEMPORAL.contains(ty)) {
                Some(ty) => format!("{ty} {}", sql::literal(text)),
                None => {
                    return Err(refuse(
                        "only date and time literals may be typed (DATE '2026-01-01')",
                        expr.to_string(),
                        HINT,
                    ))
                }
            }
        }
        // Every compound is written inside its own parentheses already.
        Expr::Nested(x) => e(x)?,
        Expr::UnaryOp { op, expr: x } => match op {
            UnaryOperator::Not => format!("(NOT {})", e(x)?),
            UnaryOperator::Minus => format!("(- {})", e(x)?),
            UnaryOperator::Plus => format!("(+ {})", e(x)?),
            other => return Err(refuse(format!("operator {other} is not allowed"), expr.to_string(), HINT)),
        },
        Expr::BinaryOp { left, op, right } => {
            use BinaryOperator::*;
            let op = match op {
                Plus => "+",
                Minus => "-",
                Multiply => "*",
                Divide => "/",
                Modulo => "%",
                StringConcat => "||",
                Gt => ">",
                Lt => "<",
                GtEq => ">=",
                LtEq => "<=",
                Eq => "=",
                NotEq => "<>",
                And => "AND",
                Or => "OR",
                other => {
                    return Err(refuse(
                        format!("operator {other} is not allowed in a condition"),
                        expr.to_string(),
                        HINT,
                    ))
                }
            };
            format!("({} {op} {})", e(left)?, e(right)?)
        }
        Expr::IsNull(x) => format!("({} IS NULL)", e(x)?),
        Expr::IsNotNull(x) => format!("({} IS NOT NULL)", e(x)?),
        Expr::IsTrue(x) => format!("({} IS TRUE)", e(x)?),
        Expr::IsNotTrue(x) => format!("({} IS NOT TRUE)", e(x)?),
        Expr::IsFalse(x) => format!("({} IS FALSE)", e(x)?),
        Expr::IsNotFalse(x) => format!("({} IS NOT FALSE)", e(x)?),
        Expr::IsDistinctFrom(a, b) => format!("({} IS DISTINCT FROM {})", e(a)?, e(b)?),
        Expr::IsNotDistinctFrom(a, b) => format!("({} IS NOT DISTINCT FROM {})", e(a)?, e(b)?),
        Expr::In { expr: x, target: InTarget::List(list), negated, global: false } => {
            let items = list.iter().map(e).collect::<Result<Vec<_>, _>>()?;
            format!("({}{} IN ({}))", e(x)?, if *negated { " NOT" } else { "" }, items.join(", "))
        }
        Expr::Between { expr: x, negated, low, high } => {
            format!("({}{} BETWEEN {} AND {})", e(x)?, if *negated { " NOT" } else { "" }, e(low)?, e(high)?)
        }
        Expr::Like { negated, expr: x, pattern, escape_char: None, any: false }
        | Expr::ILike { negated, expr: x, pattern, escape_char: None, any: false } => {
            let op = if matches!(expr, Expr::Like { .. }) { "LIKE" } else { "ILIKE" };
            format!("({}{} {op} {})", e(x)?, if *negated { " NOT" } else { "" }, e(pattern)?)
        }
        Expr::Cast { kind: CastKind::Cast | CastKind::DoubleColon, expr: x, format: None, data_type } => {
            let ty = cast_type(data_type).ok_or_else(|| {
                refuse(
                    format!("cast to {data_type} is not allowed in a condition"),
                    expr.to_string(),
                    "Cast to numeric, text, boolean, date/time, uuid or json types.",
                )
            })?;
            format!("CAST({} AS {ty}{})", e(x)?, type_modifiers(data_type)?)
        }
        Expr::Function(f) => emit_function(f, scope)?,
        // TRIM(x) and TRIM(x, 'chars'): btrim; the LEADING/TRAILING/FROM forms are refused.
        Expr::Trim { trim_where: None, trim_what: None, expr: x, trim_characters } => {
            let mut args = vec![e(x)?];
            for c in trim_characters.iter().flatten() {
                args.push(e(c)?);
            }
            format!("pg_catalog.btrim({})", args.join(", "))
        }
        Expr::Case { operand, conditions, else_result, .. } => {
            let mut out = String::from("(CASE");
            if let Some(x) = operand {
                out.push_str(&format!(" {}", e(x)?));
            }
            for when in conditions {
                out.push_str(&format!(" WHEN {} THEN {}", e(&when.condition)?, e(&when.result)?));
            }
            if let Some(x) = else_result {
                out.push_str(&format!(" ELSE {}", e(x)?));
            }
            out.push_str(" END)");
            out
        }
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::In { .. } => {
            return Err(refuse(
                "subqueries are not allowed in a condition",
                expr.to_string(),
                "Restrict by another table with the query algebra (a semijoin), not a subquery.",
            ))
        }
        Expr::CompoundIdentifier(parts) => {
            return Err(refuse(
                "qualified names are not allowed in a condition",
                parts.iter().map(|p| p.value.clone()).collect::<Vec<_>>().join("."),
                "Name attributes of the restricted table without a table or schema prefix.",
            ))
        }
        other => {
            return Err(refuse(
                "this kind of expression is not allowed in a condition",
                other.to_string(),
                HINT,
            ))
        }
    })
}

/// Plain literals only: escape strings, dollar quotes, placeholders and the like are refused.
fn literal(value: &Value) -> Result<String, RestrictionError> {
    match value {
        Value::Number(text, _) => {
            let number = text.parse::<f64>().ok().filter(|n| n.is_finite());
            let plain = text.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
            match number {
                Some(_) if plain => Ok(text.clone()),
                _ => Err(refuse("not a number", text.clone(), HINT)),
            }
        }
        Value::SingleQuotedString(text) => Ok(sql::literal(text)),
        Value::Boolean(b) => Ok(if *b { "TRUE" } else { "FALSE" }.to_string()),
        Value::Null => Ok("NULL".to_string()),
        other => Err(refuse("this kind of literal is not allowed in a condition", other.to_string(), HINT)),
    }
}

const TEMPORAL: &[&str] = &["date", "time", "timestamp", "timestamptz", "interval"];

/// The PostgreSQL type a cast may name, spelt by us (no reg* lookups, arrays or user types).
fn cast_type(data_type: &DataType) -> Option<&'static str> {
    let name = data_type.to_string().to_lowercase();
    if name.contains('[') {
        return None;
    }
    let base = name.split('(').next().unwrap_or_default().trim().to_string();
    Some(match base.as_str() {
        "int" | "integer" | "int4" => "integer",
        "smallint" | "int2" => "smallint",
        "bigint" | "int8" => "bigint",
        "real" | "float4" => "real",
        "float" | "float8" | "double precision" | "double" => "double precision",
        "numeric" | "decimal" => "numeric",
        "text" => "text",
        "varchar" | "character varying" => "varchar",
        "char" | "character" => "char",
        "boolean" | "bool" => "boolean",
        "date" => "date",
        "time" | "time without time zone" => "time",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "timestamptz" | "timestamp with time zone" => "timestamptz",
        "interval" => "interval",
        "uuid" => "uuid",
        "json" => "json",
        "jsonb" => "jsonb",
        _ => return None,
    })
}

/// `(10)` or `(5,2)` after a cast type: digits only.
fn type_modifiers(data_type: &DataType) -> Result<String, RestrictionError> {
    let name = data_type.to_string();
    let Some(open) = name.find('(') else { return Ok(String::new()) };
    let inner = name[open + 1..].trim_end().strip_suffix(')').unwrap_or("x");
    let numbers: Vec<&str> = inner.split(',').map(str::trim).collect();
    if numbers.iter().all(|n| !n.is_empty() && n.len() <= 4 && n.chars().all(|c| c.is_ascii_digit())) {
        Ok(format!("({})", numbers.join(",")))
    } else {
        Err(refuse("type modifiers must be numbers", name, HINT))
    }
}

fn emit_function(f: &Function, scope: &Scope) -> Result<String, RestrictionError> {
    let name = f.name.to_string().to_lowercase();
    let aggregate = scope.aggregates.then(|| AGGREGATES.iter().find(|n| **n == name)).flatten();
    let Some(&known) = FUNCTIONS.iter().find(|n| **n == name).or(aggregate) else {
        let hint = if AGGREGATES.contains(&name.as_str()) {
            "Aggregate functions are allowed in dj.aggr's computed attributes only.".to_string()
        } else {
            format!("Allowed functions: {}.", FUNCTIONS.join(", "))
        };
        return Err(refuse(format!("function {name} is not allowed in a condition"), f.to_string(), &hint));
    };
    if aggregate.is_some() {
        return emit_aggregate(known, f, scope);
    }
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(refuse("aggregate and window forms are not allowed", f.to_string(), HINT));
    }
    let args = match &f.args {
        FunctionArguments::None => Vec::new(),
        FunctionArguments::List(list) if list.clauses.is_empty() && list.duplicate_treatment.is_none() => {
            list.args
                .iter()
                .map(|arg| match arg {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => emit(x, scope),
                    other => Err(refuse("this function argument is not allowed", other.to_string(), HINT)),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        other => return Err(refuse("these function arguments are not allowed", other.to_string(), HINT)),
    };
    Ok(match known {
        // SQL constructs, not functions: keywords that no other schema's function can shadow.
        "coalesce" | "nullif" | "greatest" | "least" => {
            format!("{}({})", known.to_uppercase(), args.join(", "))
        }
        // TRIM is syntax too; with function-call arguments it is btrim.
        "trim" => format!("pg_catalog.btrim({})", args.join(", ")),
        // Schema-qualified, so no function of the same name elsewhere on the search path is called.
        _ => format!("pg_catalog.{known}({})", args.join(", ")),
    })
}

/// `count(*)`, `avg(x)`, `count(DISTINCT x)`: one argument, no ORDER BY, FILTER or window.
fn emit_aggregate(name: &str, f: &Function, scope: &Scope) -> Result<String, RestrictionError> {
    let bad = || {
        refuse(
            "this aggregate form is not allowed",
            f.to_string(),
            "Write e.g. count(*), avg(rate) or count(DISTINCT x).",
        )
    };
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(bad());
    }
    let FunctionArguments::List(list) = &f.args else { return Err(bad()) };
    if !list.clauses.is_empty() || list.args.len() != 1 {
        return Err(bad());
    }
    let distinct = match list.duplicate_treatment {
        Some(sqlparser::ast::DuplicateTreatment::Distinct) => "DISTINCT ",
        _ => "",
    };
    let argument = match &list.args[0] {
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" && distinct.is_empty() => {
            "*".to_string()
        }
        // An aggregate of an aggregate is an error in SQL too: check the argument without them.
        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => {
            emit(x, &Scope { aggregates: false, ..scope.clone() })?
        }
        _ => return Err(bad()),
    };
    Ok(format!("pg_catalog.{name}({distinct}{argument})"))
}

/// What a JSON key does with attributes the relation lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownAttributes {
    /// Skip them, as DataJoint's restriction by a dict does.
    Ignore,
    /// Refuse the key (`dj.delete`: a misspelled attribute must not widen a delete to every row).
    Refuse,
}

/// The one translation of a JSON key (`{"subject_id": 1, "session": "a"}`) into SQL: each
/// attribute equal to its value (strings as literals, numbers and booleans through their JSON text,
/// which PostgreSQL casts to the column's type; null as IS NULL), ANDed and parenthesized; `TRUE`
/// when no attribute applies. `column` gives an attribute's SQL (None: the relation lacks it).
/// Refused: the first attribute the relation lacks, when `unknown` says so.
pub fn json_key(
    key: &serde_json::Map<String, serde_json::Value>,
    column: impl Fn(&str) -> Option<String>,
    unknown: UnknownAttributes,
) -> Result<String, String> {
    let mut terms = Vec::new();
    for (name, value) in key {
        let Some(c) = column(name) else {
            match unknown {
                UnknownAttributes::Ignore => continue,
                UnknownAttributes::Refuse => return Err(name.clone()),
            }
        };
        terms.push(match value {
            serde_json::Value::Null => format!("{c} IS NULL"),
            serde_json::Value::String(s) => format!("{c} = {}", sql::literal(s)),
            other => format!("{c} = {}", sql::literal(&other.to_string())),
        });
    }
    Ok(if terms.is_empty() { "TRUE".into() } else { format!("({})", terms.join(" AND ")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Vec<String> {
        ["depth", "quality", "animal_id", "Weird"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn long_conditions_are_refused_not_a_stack_overflow() {
        let chain = vec!["depth > 1"; 50_000].join(" AND ");
        assert_eq!(condition(&chain, &attrs()).unwrap_err().kind, RestrictionKind::TooLong);
        let sum = format!("depth = {}", vec!["1"; 100_000].join(" + "));
        assert!(condition(&sum, &attrs()).is_err());
        // A long but reasonable IN list is fine.
        let list =
            format!("animal_id IN ({})", (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
        assert!(condition(&list, &attrs()).is_ok());
    }

    #[test]
    fn sql_constructs_are_not_qualified_as_functions() {
        // pg_catalog.coalesce does not exist: COALESCE, NULLIF, GREATEST, LEAST and TRIM are syntax.
        assert_eq!(
            condition("coalesce(depth, 0) > greatest(animal_id, 1)", &attrs()).unwrap(),
            "(COALESCE(\"depth\", 0) > GREATEST(\"animal_id\", 1))"
        );
        assert_eq!(
            condition("trim(quality) = 'x'", &attrs()).unwrap(),
            "(pg_catalog.btrim(\"quality\") = 'x')"
        );
        assert_eq!(condition("abs(depth) > 1", &attrs()).unwrap(), "(pg_catalog.abs(\"depth\") > 1)");
    }

    #[test]
    fn aggregates_only_where_the_scope_allows_them() {
        let plain = Scope::plain(&attrs());
        assert!(expression("count(*)", &plain).is_err());
        let grouped = Scope { aggregates: true, ..plain };
        assert_eq!(expression("count(*)", &grouped).unwrap(), "pg_catalog.count(*)");
        assert_eq!(
            expression("count(DISTINCT quality)", &grouped).unwrap(),
            "pg_catalog.count(DISTINCT \"quality\")"
        );
        assert_eq!(expression("avg(depth) * 2", &grouped).unwrap(), "(pg_catalog.avg(\"depth\") * 2)");
        // No aggregate of an aggregate, no window or FILTER forms, no ORDER BY inside.
        assert!(expression("sum(count(*))", &grouped).is_err());
        assert!(expression("count(*) OVER ()", &grouped).is_err());
        assert!(expression("count(*) FILTER (WHERE depth > 1)", &grouped).is_err());
        assert!(expression("sum(depth ORDER BY depth)", &grouped).is_err());
    }

    #[test]
    fn conditions_are_written_anew_from_the_syntax_tree() {
        let c = |text: &str| condition(text, &attrs()).unwrap();
        assert_eq!(c("depth > 100 and quality = 'good'"), r#"(("depth" > 100) AND ("quality" = 'good'))"#);
        assert_eq!(c("DEPTH between 1 and 2"), r#"("depth" BETWEEN 1 AND 2)"#);
        assert_eq!(
            c("animal_id in (1, 2) or quality is null"),
            r#"(("animal_id" IN (1, 2)) OR ("quality" IS NULL))"#
        );
        assert_eq!(c("lower(quality) like 'g%'"), r#"(pg_catalog.lower("quality") LIKE 'g%')"#);
        assert_eq!(c(r#""Weird" = 1"#), r#"("Weird" = 1)"#);
        assert_eq!(c("not (depth::int >= -3)"), r#"(NOT (CAST("depth" AS integer) >= (- 3)))"#);
        assert_eq!(c("quality = 'it''s'"), r#"("quality" = 'it''s')"#);
        assert_eq!(c("quality > date '2026-01-01'"), r#"("quality" > date '2026-01-01')"#);
        assert_eq!(c("cast(depth as numeric(5,2)) > 1.5e2"), r#"(CAST("depth" AS numeric(5,2)) > 1.5e2)"#);
    }

    /// sqlparser's own printer does not double a quote that follows a backslash; the condition
    /// below would have closed the string early and run a second statement.
    #[test]
    fn backslashes_in_strings_cannot_end_the_literal() {
        let nasty = r#"quality = 'x\''' OR quality = ' OR TRUE); DROP TABLE other; SELECT 0 --'"#;
        let emitted = condition(nasty, &attrs()).unwrap();
        assert_eq!(
            emitted,
            r#"(("quality" = E'x\\''') OR ("quality" = ' OR TRUE); DROP TABLE other; SELECT 0 --'))"#
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "depth > 1; drop table x",
            "depth > 1 -- comment",
            "depth > 1 /* c */",
            "depth > (select 1)",
            "exists (select 1)",
            "depth in (select depth from other)",
            "pg_sleep(10) is null",
            "other_column = 1",
            "lab.scan.depth = 1",
            "depth > 1 depth",
            "",
            "'unterminated",
            "depth = current_setting('x')",
            "count(*) > 1",
            "weird = 1",
            "depthe'\\''",
            "quality = e'x'",
            "quality = $1",
            "quality = $$x$$",
            "depth::regclass is null",
            "regclass 'pg_authid' is null",
            "depth::int[] is null",
        ] {
            assert!(condition(bad, &attrs()).is_err(), "{bad}");
        }
        let e = condition("size > 1", &attrs()).unwrap_err();
        assert!(e.hint.contains("depth, quality"), "{e:?}");
    }

    #[test]
    fn a_json_key_is_one_condition_whatever_the_caller() {
        let key: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"a": 1, "b": "it's", "c": null, "zz": true}"#).unwrap();
        let column = |n: &str| (n != "zz").then(|| format!("q.{n}"));
        assert_eq!(
            json_key(&key, column, UnknownAttributes::Ignore).unwrap(),
            "(q.a = '1' AND q.b = 'it''s' AND q.c IS NULL)"
        );
        assert_eq!(json_key(&key, column, UnknownAttributes::Refuse).unwrap_err(), "zz");
        assert_eq!(json_key(&Default::default(), column, UnknownAttributes::Refuse).unwrap(), "TRUE");
    }
}
