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
    table: Table,
    /// The single-row INSERT each row came with.
    statement: Statement,
    /// The same for many rows, its parameters arrays.
    many: Statement,
    /// The rows' values, with the number of the key they belong to (in key order).
    rows: Vec<(usize, Vec<Option<pg_sys::Datum>>)>,
}

pub struct Pending {
    /// The target: its rows are written before its parts' (which refer to them).
    target: Table,
    /// Where the held values live, until the flush.
    cx: PgMemoryContexts,
    groups: Vec<Group>,
    /// Every row held, in the order the guests inserted them: (key number, group, row in group).
    order: Vec<(usize, usize, usize)>,
    /// The keys made since the last flush, with the time their make took.
    keys: Vec<(Row, Duration)>,
}

impl Pending {
    pub fn new(target: Table) -> Pending {
        Pending {
            target,
            cx: PgMemoryContexts::new("dj.populate rows"),
            groups: Vec::new(),
            order: Vec::new(),
            keys: Vec::new(),
        }
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
                let group =
                    Group { table: table.clone(), statement: statement.clone(), many, rows: Vec::new() };
                self.groups.push(group);
                self.groups.len() - 1
            }
        };
        self.order.push((key, group, self.groups[group].rows.len()));
        self.groups[group].rows.push((key, row));
        Ok(())
    }

    /// The key being made failed: its rows go.
    pub fn discard_key(&mut self) {
        let key = self.keys.len();
        while let Some(&(k, group, _)) = self.order.last().filter(|(k, ..)| *k == key) {
            debug_assert_eq!(self.groups[group].rows.last().map(|(k, _)| *k), Some(k));
            self.groups[group].rows.pop();
            self.order.pop();
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
        let (groups, keys, target) = (&self.groups, &self.keys, &self.target);
        let together = unsafe {
            self.cx.switch_to(|_| {
                in_subtransaction(|| {
                    // The target's rows first, then its parts'.
                    let (first, then): (Vec<&Group>, Vec<&Group>) =
                        groups.iter().filter(|g| !g.rows.is_empty()).partition(|g| g.table == *target);
                    for g in first.into_iter().chain(then) {
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

    /// Each key's rows in its own subtransaction, in the order its make inserted them.
    fn one_by_one(
        &mut self,
        plans: &Plans,
        stop: &impl Fn(&Failure) -> bool,
        done: &dyn Fn(&Row) -> DjResult<()>,
    ) -> Result<Vec<(Row, Failure, Duration)>, Failure> {
        let mut failures = Vec::new();
        let mut at = 0;
        for (n, (key, took)) in self.keys.iter().enumerate() {
            let end = at + self.order[at..].iter().take_while(|(k, ..)| *k == n).count();
            let (rows, groups) = (&self.order[at..end], &self.groups);
            at = end;
            let written = unsafe {
                self.cx.switch_to(|_| {
                    in_subtransaction(|| {
                        for &(_, g, r) in rows {
                            plans.execute(&groups[g].statement, &groups[g].rows[r].1)?;
                        }
                        done(key)?;
                        Ok(())
                    })
                })
            };
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
        self.order.clear();
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
