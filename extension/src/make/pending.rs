//! The rows of a populate run's keys, held back and written a batch at a time: one INSERT per
//! table and column set, its values as arrays (`INSERT ... SELECT * FROM unnest($1, ...)`),
//! instead of one INSERT per row. When a batch's INSERT fails (a row another session wrote
//! meanwhile, a constraint), each key's rows are written alone, in its own subtransaction, so a
//! failing row fails only its key, as if every key had written its rows itself.

use std::time::Duration;

use datajoint_core::dependencies::Table;
use datajoint_core::host::{self as core_host, Column, Statement};
use datajoint_core::make::{Row, Value};
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use super::{datums, in_subtransaction, values, Failure, Plans};
use crate::error::DjResult;

/// Rows of one INSERT (a table and a column set).
struct Group {
    /// The single-row INSERT each row came with.
    statement: Statement,
    /// The same for many rows, its parameters arrays.
    many: Statement,
    /// The rows' values, with the number of the key they belong to (in key order).
    rows: Vec<(usize, Vec<Option<pg_sys::Datum>>)>,
}

pub struct Pending {
    /// Where the held values live, until the flush.
    cx: PgMemoryContexts,
    groups: Vec<Group>,
    /// The keys made since the last flush, with the time their make took.
    keys: Vec<(Row, Duration)>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending { cx: PgMemoryContexts::new("dj.populate rows"), groups: Vec::new(), keys: Vec::new() }
    }

    /// Holds back a row of the key being made, its values checked and converted now (a value its
    /// column cannot take fails the key at once, as the INSERT would).
    pub fn push(&mut self, table: &Table, statement: &Statement, args: &[&Value]) -> DjResult<()> {
        let row = unsafe { self.cx.switch_to(|_| datums(statement, args)) }?;
        let key = self.keys.len();
        let group = match self.groups.iter().position(|g| g.statement.sql == statement.sql) {
            Some(i) => i,
            None => {
                let names: Vec<String> = statement.params.iter().map(|c| c.name.clone()).collect();
                let many = Statement {
                    label: statement.label.clone(),
                    sql: core_host::insert_many_sql(table, &names),
                    params: statement.params.clone(),
                };
                self.groups.push(Group { statement: statement.clone(), many, rows: Vec::new() });
                self.groups.len() - 1
            }
        };
        self.groups[group].rows.push((key, row));
        Ok(())
    }

    /// The key being made failed: its rows go.
    pub fn discard_key(&mut self) {
        let key = self.keys.len();
        for g in &mut self.groups {
            while g.rows.last().is_some_and(|(k, _)| *k == key) {
                g.rows.pop();
            }
        }
    }

    /// The key being made succeeded: its rows wait for the flush.
    pub fn keep_key(&mut self, key: &Row, took: Duration) {
        self.keys.push((key.clone(), took));
    }

    /// Writes the rows held back, then runs `done` for each key (with them). Returns the keys
    /// whose rows failed (written alone, after the batch's INSERT failed), with the error and the
    /// time their make took; a cancel (`stop` says which errors are one) ends the flush as an
    /// error. Nothing is held afterwards.
    pub fn flush(
        &mut self,
        plans: &Plans,
        stop: impl Fn(&Failure) -> bool,
        done: &dyn Fn(&Row) -> DjResult<()>,
    ) -> Result<Vec<(Row, Failure, Duration)>, Failure> {
        if self.keys.is_empty() {
            self.clear();
            return Ok(Vec::new());
        }
        let (groups, keys) = (&self.groups, &self.keys);
        let together = unsafe {
            self.cx.switch_to(|_| {
                in_subtransaction(|| {
                    for g in groups.iter().filter(|g| !g.rows.is_empty()) {
                        insert_many(plans, g)?;
                    }
                    for (key, _) in keys {
                        done(key)?;
                    }
                    Ok(())
                })
            })
        };
        let outcome = match together {
            Ok(()) => Ok(Vec::new()),
            Err(e) if stop(&e) => Err(e),
            // Each key's rows alone: only the keys whose rows fail are failures.
            Err(_) => self.one_by_one(plans, &stop, done),
        };
        self.clear();
        outcome
    }

    fn one_by_one(
        &mut self,
        plans: &Plans,
        stop: &impl Fn(&Failure) -> bool,
        done: &dyn Fn(&Row) -> DjResult<()>,
    ) -> Result<Vec<(Row, Failure, Duration)>, Failure> {
        let mut next = vec![0usize; self.groups.len()];
        let mut failures = Vec::new();
        for (n, (key, took)) in self.keys.iter().enumerate() {
            let groups = &self.groups;
            let next = &mut next;
            let written = unsafe {
                self.cx.switch_to(|_| {
                    in_subtransaction(|| {
                        for (g, at) in groups.iter().zip(next.iter_mut()) {
                            while let Some((_, row)) = g.rows.get(*at).filter(|(k, _)| *k == n) {
                                plans.execute(&g.statement, row)?;
                                *at += 1;
                            }
                        }
                        done(key)?;
                        Ok(())
                    })
                })
            };
            // Rows of this key not reached (after the failing one) are passed over.
            for (g, at) in self.groups.iter().zip(next.iter_mut()) {
                while g.rows.get(*at).is_some_and(|(k, _)| *k == n) {
                    *at += 1;
                }
            }
            match written {
                Ok(()) => {}
                Err(e) if stop(&e) => return Err(e),
                Err(e) => failures.push((key.clone(), e, *took)),
            }
        }
        Ok(failures)
    }

    fn clear(&mut self) {
        self.groups.clear();
        self.keys.clear();
        unsafe { self.cx.reset() };
    }
}

/// One INSERT of a group's rows, each column's values as an array.
fn insert_many(plans: &Plans, g: &Group) -> DjResult<()> {
    let mut params: Vec<Column> = Vec::with_capacity(g.many.params.len());
    let mut arrays = Vec::with_capacity(g.many.params.len());
    for (i, column) in g.many.params.iter().enumerate() {
        let column_values: Vec<Option<pg_sys::Datum>> = g.rows.iter().map(|(_, row)| row[i]).collect();
        let (array_type, array) = values::array_from_datums(&column_values, column, &g.many.label)?;
        params.push(Column { type_id: array_type.to_u32(), ..column.clone() });
        arrays.push(Some(array));
    }
    plans.execute(&Statement { params, ..g.many.clone() }, &arrays)
}
