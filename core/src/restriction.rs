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
    pub message: String,
    /// The offending fragment of the condition.
    pub fragment: String,
    pub hint: String,
}

fn refuse(message: impl Into<String>, fragment: impl Into<String>, hint: &str) -> RestrictionError {
    RestrictionError { message: message.into(), fragment: fragment.into(), hint: hint.to_string() }
}

const HINT: &str = "Write a condition on the table's attributes, e.g. 'depth > 100 AND quality = ''good'''.";

/// Parses and checks `condition` against the table's attributes; returns it re-emitted from the
/// syntax tree.
pub fn condition(condition: &str, attributes: &[String]) -> Result<String, RestrictionError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, condition)
        .tokenize()
        .map_err(|e| refuse(format!("cannot read the condition: {e}"), condition, HINT))?;
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
    check(&expr, attributes)?;
    Ok(expr.to_string())
}

fn check(expr: &Expr, attributes: &[String]) -> Result<(), RestrictionError> {
    let recurse = |e: &Expr| check(e, attributes);
    match expr {
        Expr::Identifier(ident) => {
            let name =
                if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
            if attributes.iter().any(|a| *a == name) {
                Ok(())
            } else {
                Err(refuse(
                    format!("\"{name}\" is not an attribute of the table"),
                    ident.to_string(),
                    &format!("Its attributes are: {}.", attributes.join(", ")),
                ))
            }
        }
        // Plain literals only: escape strings, dollar quotes, placeholders and the like are
        // refused rather than re-emitted in a form that may not mean the same.
        Expr::Value(v) => match &v.value {
            Value::Number(..) | Value::SingleQuotedString(_) | Value::Boolean(_) | Value::Null => Ok(()),
            other => {
                Err(refuse("this kind of literal is not allowed in a condition", other.to_string(), HINT))
            }
        },
        Expr::TypedString(t) => {
            let literal = matches!(t.value.value, Value::SingleQuotedString(_));
            if literal && simple_type(&t.data_type) && is_temporal(&t.data_type) {
                Ok(())
            } else {
                Err(refuse(
                    "only date and time literals may be typed (DATE '2026-01-01')",
                    expr.to_string(),
                    HINT,
                ))
            }
        }
        Expr::Nested(e) => recurse(e),
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus => recurse(expr),
            other => Err(refuse(format!("operator {other} is not allowed"), expr.to_string(), HINT)),
        },
        Expr::BinaryOp { left, op, right } => {
            use BinaryOperator::*;
            match op {
                Plus | Minus | Multiply | Divide | Modulo | StringConcat | Gt | Lt | GtEq | LtEq | Eq
                | NotEq | And | Or => {
                    recurse(left)?;
                    recurse(right)
                }
                other => Err(refuse(
                    format!("operator {other} is not allowed in a condition"),
                    expr.to_string(),
                    HINT,
                )),
            }
        }
        Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsNotTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotFalse(e) => recurse(e),
        Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
            recurse(a)?;
            recurse(b)
        }
        Expr::In { expr, target: InTarget::List(list), .. } => {
            recurse(expr)?;
            list.iter().try_for_each(recurse)
        }
        Expr::Between { expr, low, high, .. } => {
            recurse(expr)?;
            recurse(low)?;
            recurse(high)
        }
        Expr::Like { expr, pattern, escape_char: None, any: false, .. }
        | Expr::ILike { expr, pattern, escape_char: None, any: false, .. } => {
            recurse(expr)?;
            recurse(pattern)
        }
        Expr::Cast { kind: CastKind::Cast | CastKind::DoubleColon, expr: inner, format: None, data_type } => {
            if !simple_type(data_type) {
                return Err(refuse(
                    format!("cast to {data_type} is not allowed in a condition"),
                    expr.to_string(),
                    "Cast to numeric, text, boolean, date/time, uuid or json types.",
                ));
            }
            recurse(inner)
        }
        Expr::Extract { expr, .. } => recurse(expr),
        Expr::Function(f) => check_function(f, attributes),
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::In { .. } => Err(refuse(
            "subqueries are not allowed in a condition",
            expr.to_string(),
            "Restrict by another table with the query algebra (a semijoin), not a subquery.",
        )),
        Expr::CompoundIdentifier(parts) => Err(refuse(
            "qualified names are not allowed in a condition",
            parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("."),
            "Name attributes of the restricted table without a table or schema prefix.",
        )),
        other => {
            Err(refuse("this kind of expression is not allowed in a condition", other.to_string(), HINT))
        }
    }
}

/// Scalar types a condition may cast to (no reg* lookups, no arrays or composite types).
fn simple_type(data_type: &DataType) -> bool {
    let name = data_type.to_string().to_lowercase();
    let base = name.split(['(', '[']).next().unwrap_or_default().trim();
    !name.contains('[')
        && [
            "int",
            "integer",
            "int2",
            "int4",
            "int8",
            "smallint",
            "bigint",
            "real",
            "float",
            "float4",
            "float8",
            "double precision",
            "numeric",
            "decimal",
            "text",
            "varchar",
            "character varying",
            "char",
            "character",
            "boolean",
            "bool",
            "date",
            "time",
            "timestamp",
            "timestamptz",
            "interval",
            "uuid",
            "json",
            "jsonb",
            "time without time zone",
            "time with time zone",
            "timestamp without time zone",
            "timestamp with time zone",
        ]
        .contains(&base)
}

fn is_temporal(data_type: &DataType) -> bool {
    let name = data_type.to_string().to_lowercase();
    ["date", "time", "timestamp", "interval"].iter().any(|t| name.starts_with(t))
}

fn check_function(f: &Function, attributes: &[String]) -> Result<(), RestrictionError> {
    let name = f.name.to_string().to_lowercase();
    if !FUNCTIONS.contains(&name.as_str())
        || f.filter.is_some()
        || f.over.is_some()
        || !f.within_group.is_empty()
    {
        return Err(refuse(
            format!("function {name} is not allowed in a condition"),
            f.to_string(),
            &format!("Allowed functions: {}.", FUNCTIONS.join(", ")),
        ));
    }
    match &f.args {
        FunctionArguments::None => Ok(()),
        FunctionArguments::List(list) if list.clauses.is_empty() && list.duplicate_treatment.is_none() => {
            for arg in &list.args {
                match arg {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => check(e, attributes)?,
                    other => {
                        return Err(refuse("this function argument is not allowed", other.to_string(), HINT))
                    }
                }
            }
            Ok(())
        }
        other => Err(refuse("these function arguments are not allowed", other.to_string(), HINT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Vec<String> {
        ["depth", "quality", "animal_id", "Weird"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn conditions_are_re_emitted_from_the_syntax_tree() {
        assert_eq!(
            condition("depth > 100 and quality = 'good'", &attrs()).unwrap(),
            "depth > 100 AND quality = 'good'"
        );
        assert_eq!(condition("DEPTH between 1 and 2", &attrs()).unwrap(), "DEPTH BETWEEN 1 AND 2");
        assert_eq!(
            condition("animal_id in (1, 2) or quality is null", &attrs()).unwrap(),
            "animal_id IN (1, 2) OR quality IS NULL"
        );
        assert_eq!(condition("lower(quality) like 'g%'", &attrs()).unwrap(), "lower(quality) LIKE 'g%'");
        assert_eq!(condition("\"Weird\" = 1", &attrs()).unwrap(), "\"Weird\" = 1");
        assert_eq!(condition("not (depth::int >= -3)", &attrs()).unwrap(), "NOT (depth::INT >= -3)");
        assert_eq!(condition("quality = 'it''s'", &attrs()).unwrap(), "quality = 'it''s'");
        assert_eq!(
            condition("quality > date '2026-01-01'", &attrs()).unwrap(),
            "quality > DATE '2026-01-01'"
        );
        assert_eq!(
            condition("cast(depth as numeric(5,2)) > 1", &attrs()).unwrap(),
            "CAST(depth AS NUMERIC(5,2)) > 1"
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
}
