//! The one ORDER BY grammar: `KEY` (the primary key) or `attr [ASC|DESC] [NULLS FIRST|LAST]`,
//! used by `dj.top`, `dj.fetch` and a guest's fetch.

use super::{AlgebraError, Attribute, Code};
use crate::sql;

/// `ORDER BY` items over `columns` (attribute, SQL): `KEY` (the primary key), or `attr [ASC|DESC]
/// [NULLS FIRST|LAST]`.
pub fn order_by_attributes(heading: &[Attribute], items: &[String]) -> Result<Vec<String>, AlgebraError> {
    order_by(&heading.iter().map(|a| (a.clone(), sql::ident(&a.name))).collect::<Vec<_>>(), items)
}

pub(crate) fn order_by(
    columns: &[(Attribute, String)],
    items: &[String],
) -> Result<Vec<String>, AlgebraError> {
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
        // `KEY` is the primary key, unless an attribute is called `key`.
        let attribute_named_key = columns.iter().any(|(a, _)| a.name == "key");
        if first == "key" && item.trim().len() == 3 && !attribute_named_key {
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

    fn attr(name: &str, in_key: bool) -> Attribute {
        Attribute { name: name.into(), in_key, lineage: None }
    }

    #[test]
    fn key_is_the_primary_key_unless_an_attribute_is_called_key() {
        let items = vec!["KEY".to_string(), "b desc nulls last".to_string()];
        let heading = [attr("a", true), attr("b", false)];
        assert_eq!(order_by_attributes(&heading, &items).unwrap(), ["\"a\"", "\"b\" DESC NULLS LAST"]);
        let heading = [attr("a", true), attr("key", false), attr("b", false)];
        assert_eq!(order_by_attributes(&heading, &items).unwrap(), ["\"key\"", "\"b\" DESC NULLS LAST"]);
        assert_eq!(
            order_by_attributes(&heading, &["b sideways".to_string()]).unwrap_err().code,
            Code::Syntax
        );
        assert_eq!(
            order_by_attributes(&heading, &["c".to_string()]).unwrap_err().code,
            Code::UndefinedColumn
        );
    }
}
