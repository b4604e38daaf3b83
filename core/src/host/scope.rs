//! What a make function may touch: it writes its target and the target's parts, and reads only
//! their ancestors (with the parts of those ancestors, which belong to the same entities).

use crate::dependencies::{Dependencies, Table};
use crate::naming;
use crate::sql;

use super::error::{HostError, Kind};

/// The tables one make function writes and reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub target: Table,
    pub parts: Vec<Table>,
    /// Ancestors of the target and of its parts, and their parts (the target and its parts
    /// excluded), in the order found.
    pub readable: Vec<Table>,
}

impl Scope {
    /// The scope of `target`'s make in the pipeline `deps`.
    pub fn of(deps: &Dependencies, target: &Table) -> Scope {
        let parts: Vec<Table> = deps.parts(target).into_iter().cloned().collect();
        let writable: Vec<Table> = std::iter::once(target.clone()).chain(parts.iter().cloned()).collect();
        let mut readable: Vec<Table> = Vec::new();
        for w in &writable {
            for a in deps.ancestors(w) {
                for t in std::iter::once(a).chain(deps.parts(a)) {
                    if !writable.contains(t) && !readable.contains(t) {
                        readable.push(t.clone());
                    }
                }
            }
        }
        Scope { target: target.clone(), parts, readable }
    }

    /// The target and its parts.
    pub fn writable(&self) -> Vec<Table> {
        std::iter::once(self.target.clone()).chain(self.parts.iter().cloned()).collect()
    }

    pub fn may_write(&self, t: &Table) -> bool {
        *t == self.target || self.parts.contains(t)
    }

    pub fn may_read(&self, t: &Table) -> bool {
        self.readable.contains(t)
    }

    /// Ok when the make may read `t`; the refusal otherwise.
    pub fn check_read(&self, t: &Table) -> Result<(), HostError> {
        if self.may_read(t) {
            return Ok(());
        }
        Err(HostError::new(
            Kind::Privilege,
            format!(
                "the make function of {} may not read {}: it is not an ancestor of the target",
                self.target.qualified(),
                t.qualified()
            ),
            "A make function reads only the tables its target depends on (dj.ancestors lists them).",
        ))
    }

    /// Ok when the make may insert into `t`; the refusal otherwise.
    pub fn check_write(&self, t: &Table) -> Result<(), HostError> {
        if self.may_write(t) {
            return Ok(());
        }
        Err(HostError::new(
            Kind::Privilege,
            format!("the make function of {} may not insert into {}", self.target.qualified(), t.qualified()),
            "A make function inserts only into its target and the target's parts.",
        ))
    }
}

/// How a table name a guest gives is looked up: `Class`, `Master.Part`, `Part` (of the
/// target), `schema.Class`, `schema.table`; names without a schema are in the target's schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The name as every dj function reads table names (`schema.Class`, `schema.Master.Part`,
    /// `"schema"."table"`).
    pub name: String,
    /// When looking `name` up fails: the part of the target a bare name means.
    pub part: Option<Table>,
}

impl Lookup {
    /// The lookup of the guest's table name `name` for a make of `scope.target`.
    pub fn of(scope: &Scope, name: &str) -> Lookup {
        let schema = sql::ident(&scope.target.schema);
        match sql::split_name(name).unwrap_or_default().as_slice() {
            [one] => {
                let part = naming::part_table_name(&scope.target.name, one);
                let part = scope.parts.iter().find(|p| p.name == part).cloned();
                Lookup { name: format!("{schema}.{}", sql::ident(one)), part }
            }
            [a, b] if naming::is_class_name(a) && naming::is_class_name(b) => {
                Lookup { name: format!("{schema}.{a}.{b}"), part: None }
            }
            _ => Lookup { name: name.to_string(), part: None },
        }
    }
}
