//! Raw SPI with kept plans (one plan per distinct statement of a populate call), and guest fetches
//! read a batch at a time within the guest's memory budget.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::rc::Rc;

use datajoint_core::host::{self, Column, Statement};
use datajoint_core::make::{Field, Row, Value};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::values::to_value;
use crate::error::{DjError, DjResult};

pub struct Plan(pg_sys::SPIPlanPtr);

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}

/// Rows read from a cursor at a time when a guest fetches many.
const FETCH_BATCH: i64 = 1000;

#[derive(Default)]
pub struct Plans(RefCell<HashMap<String, Rc<Plan>>>);

fn spi_failed(what: &str, status: i32, sql: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("{what} failed with SPI status {status}"),
        "This is a bug in datajoint; please report it.",
    )
    .detail(sql.to_string())
}

impl Plans {
    /// The kept plan of `sql`, prepared on first use with the parameter types `params` gives.
    fn get(&self, sql: &str, params: &[Column]) -> DjResult<Rc<Plan>> {
        if let Some(p) = self.0.borrow().get(sql) {
            return Ok(p.clone());
        }
        let types: Vec<pg_sys::Oid> = params.iter().map(|c| pg_sys::Oid::from(c.type_id)).collect();
        // Guest text that reaches a statement was checked for NUL; this is the last line.
        let text = CString::new(sql).map_err(|_| DjError::from(host::nul_error("a generated statement")))?;
        let plan = unsafe {
            let plan = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_ptr() as *mut _);
            if plan.is_null() {
                return Err(spi_failed("SPI_prepare", pg_sys::SPI_result, sql));
            }
            pg_sys::SPI_keepplan(plan);
            Rc::new(Plan(plan))
        };
        self.0.borrow_mut().insert(sql.to_string(), plan.clone());
        Ok(plan)
    }

    /// Opens a cursor over `sql` (no parameters) in the current transaction; it outlives the
    /// subtransactions run while reading it.
    pub fn open_cursor(&self, sql: &str) -> DjResult<pg_sys::Portal> {
        let plan = self.get(sql, &[])?;
        let _cx = KeepContext::new();
        let portal = unsafe {
            pg_sys::SPI_cursor_open(std::ptr::null(), plan.0, std::ptr::null_mut(), std::ptr::null(), false)
        };
        if portal.is_null() {
            return Err(spi_failed("SPI_cursor_open", unsafe { pg_sys::SPI_result }, sql));
        }
        Ok(portal)
    }

    /// The next `n` rows of a cursor (none at the end).
    pub fn fetch_cursor(&self, portal: pg_sys::Portal, n: i64) -> DjResult<Vec<Row>> {
        let _cx = KeepContext::new();
        unsafe {
            pg_sys::SPI_cursor_fetch(portal, true, n);
            rows_of_tuptable(&mut Budget::unlimited())
        }
    }

    /// Runs `statement` with `args`, returning at most `count` rows (0: all) in `SPI_tuptable`.
    /// Read-only runs use the statement's snapshot; others take a fresh one (in READ COMMITTED).
    fn run(
        &self,
        statement: &Statement,
        args: &[Option<pg_sys::Datum>],
        read_only: bool,
        count: i64,
    ) -> DjResult<Parameters> {
        let sql = &statement.sql;
        let plan = self.get(sql, &statement.params)?;
        let mut params = Parameters::new(plan, args);
        // SAFETY: a kept plan with as many parameters as it was prepared with.
        let status = unsafe {
            pg_sys::SPI_execute_plan(
                params.plan.0,
                params.values.as_mut_ptr(),
                params.nulls.as_ptr(),
                read_only,
                count,
            )
        };
        if status < 0 {
            return Err(spi_failed("SPI_execute_plan", status, sql));
        }
        Ok(params)
    }

    /// Runs `statement` with `args` for its effect.
    pub fn execute(&self, statement: &Statement, args: &[Option<pg_sys::Datum>]) -> DjResult<()> {
        let _cx = KeepContext::new();
        self.run(statement, args, false, 0)?;
        // SAFETY: frees the table the run left, if any.
        unsafe {
            if !pg_sys::SPI_tuptable.is_null() {
                pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
            }
        }
        Ok(())
    }

    /// The rows `statement` (a data-changing statement with RETURNING) gives, run with a fresh
    /// snapshot.
    pub fn returning(&self, statement: &Statement, args: &[Option<pg_sys::Datum>]) -> DjResult<Vec<Row>> {
        let _cx = KeepContext::new();
        self.run(statement, args, false, 0)?;
        // SAFETY: reads and frees the table the run left.
        unsafe { rows_of_tuptable(&mut Budget::unlimited()) }
    }

    /// Whether `statement` (an EXISTS query) is true, read with a fresh snapshot (in READ
    /// COMMITTED: it sees what other sessions committed since the statement began).
    pub fn exists(&self, statement: &Statement, args: &[Option<pg_sys::Datum>]) -> DjResult<bool> {
        let _cx = KeepContext::new();
        self.run(statement, args, false, 1)?;
        // SAFETY: reads and frees the table the run left.
        let rows = unsafe { rows_of_tuptable(&mut Budget::unlimited())? };
        Ok(matches!(rows.first().and_then(|r| r.first()).map(|f| &f.value), Some(Value::Boolean(true))))
    }

    /// The rows of the read-only `statement`, as the contract's values, at most `budget.left`
    /// bytes of them: most guest fetches are a row or a few, read from one execution; a result of
    /// a batch or more is read again through a cursor a batch at a time, each batch freed as it
    /// is converted, so a query over a huge table fails with 53200 without materializing it.
    pub fn query(
        &self,
        statement: &Statement,
        args: &[Option<pg_sys::Datum>],
        budget: &mut Budget,
    ) -> DjResult<Vec<Row>> {
        let _cx = KeepContext::new();
        let mut params = self.run(statement, args, true, FETCH_BATCH)?;
        // SAFETY: SPI calls on the table the run left.
        unsafe {
            if (pg_sys::SPI_processed as i64) < FETCH_BATCH {
                return rows_of_tuptable(budget);
            }
            pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
        }
        // All of it from one run of the plan, through a cursor (the same snapshot: read-only SPI
        // takes no new one): a second run may return the rows in another order (a synchronized
        // scan starts where another left off), so the first batch is not skipped but read again.
        self.read_cursor(statement, &mut params, budget)
    }

    /// The rows of the read-only `statement` through a cursor, a batch at a time (for results
    /// expected to be large, such as a query read for many keys at once).
    pub fn query_all(
        &self,
        statement: &Statement,
        args: &[Option<pg_sys::Datum>],
        budget: &mut Budget,
    ) -> DjResult<Vec<Row>> {
        let _cx = KeepContext::new();
        let plan = self.get(&statement.sql, &statement.params)?;
        let mut params = Parameters::new(plan, args);
        self.read_cursor(statement, &mut params, budget)
    }

    fn read_cursor(
        &self,
        statement: &Statement,
        params: &mut Parameters,
        budget: &mut Budget,
    ) -> DjResult<Vec<Row>> {
        // SAFETY: a cursor over a kept plan with as many parameters as it was prepared with.
        unsafe {
            let portal = pg_sys::SPI_cursor_open(
                std::ptr::null(),
                params.plan.0,
                params.values.as_mut_ptr(),
                params.nulls.as_ptr(),
                true,
            );
            if portal.is_null() {
                return Err(spi_failed("SPI_cursor_open", pg_sys::SPI_result, &statement.sql));
            }
            let mut rows = Vec::new();
            let result = loop {
                pg_sys::SPI_cursor_fetch(portal, true, FETCH_BATCH);
                let last = (pg_sys::SPI_processed as i64) < FETCH_BATCH;
                match rows_of_tuptable(budget) {
                    Ok(more) => rows.extend(more),
                    Err(e) => break Err(e),
                }
                if last {
                    break Ok(rows);
                }
            };
            pg_sys::SPI_cursor_close(portal);
            result
        }
    }
}

/// A plan with its arguments as SPI takes them.
struct Parameters {
    plan: Rc<Plan>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<std::os::raw::c_char>,
}

impl Parameters {
    fn new(plan: Rc<Plan>, args: &[Option<pg_sys::Datum>]) -> Parameters {
        let values = args.iter().map(|a| a.unwrap_or(pg_sys::Datum::from(0))).collect();
        let nulls = args.iter().map(|a| if a.is_some() { b' ' as _ } else { b'n' as _ }).collect();
        Parameters { plan, values, nulls }
    }
}

/// Host memory a guest's fetch may still take: what its memory limit has left, since the rows
/// are copied into the guest next.
pub struct Budget {
    pub left: usize,
    pub used: usize,
}

impl Budget {
    pub fn new(left: usize) -> Budget {
        Budget { left, used: 0 }
    }

    fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    /// Charges `bytes`; false when they do not fit.
    fn charge(&mut self, bytes: usize) -> bool {
        if bytes > self.left {
            return false;
        }
        self.left -= bytes;
        self.used += bytes;
        true
    }
}

/// SPI leaves its procedure context current after each call: everything allocated afterwards
/// (a key's datums, say) would live until SPI_finish, a few hundred bytes per key. This keeps
/// the caller's context current across an SPI call.
struct KeepContext(pg_sys::MemoryContext);

impl KeepContext {
    fn new() -> KeepContext {
        KeepContext(unsafe { pg_sys::CurrentMemoryContext })
    }
}

impl Drop for KeepContext {
    fn drop(&mut self) {
        unsafe { pg_sys::MemoryContextSwitchTo(self.0) };
    }
}

/// A fetch that does not fit the guest's memory limit.
fn over_budget(budget: &Budget) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
        format!(
            "the make function fetched more than its memory limit allows ({} bytes of rows so far)",
            budget.used
        ),
        "Fetch fewer rows or attributes (restrict the query, or aggregate in the database with a relation \
         expression), or have a superuser raise dj.make_memory_limit.",
    )
}

/// The rows of `SPI_tuptable` as the contract's values, charged to `budget` (each value's size is
/// checked before it is copied, so one huge value cannot slip past); frees the table.
unsafe fn rows_of_tuptable(budget: &mut Budget) -> DjResult<Vec<Row>> {
    let mut rows = Vec::new();
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() {
            return Ok(rows);
        }
        let desc = (*table).tupdesc;
        let natts = (*desc).natts as usize;
        let n = pg_sys::SPI_processed as usize;
        let columns: Vec<(String, pg_sys::Oid, bool)> = (*desc)
            .attrs
            .as_slice(natts)
            .iter()
            .map(|attr| {
                (
                    CStr::from_ptr(attr.attname.data.as_ptr()).to_string_lossy().into_owned(),
                    attr.atttypid,
                    attr.attlen == -1,
                )
            })
            .collect();
        let mut result = Ok(());
        'rows: for i in 0..n {
            let tuple = *(*table).vals.add(i);
            let mut row = Vec::with_capacity(natts);
            for (a, (name, type_oid, varlena)) in columns.iter().enumerate() {
                let mut is_null = false;
                let datum = pg_sys::SPI_getbinval(tuple, desc, (a + 1) as i32, &mut is_null);
                // What the value takes on the heap, allocator overhead included: a copy of the
                // name, and the payload of varlena values (detoasted size); fixed-size values
                // live in the Field itself (or as short text).
                let payload =
                    if *varlena && !is_null { heap(pg_sys::toast_raw_datum_size(datum)) } else { 32 };
                if !budget.charge(std::mem::size_of::<Field>() + heap(name.len()) + payload) {
                    result = Err(over_budget(budget));
                    break 'rows;
                }
                let value = match to_value(datum, is_null, *type_oid) {
                    Ok(value) => value,
                    Err(e) => {
                        result = Err(e);
                        break 'rows;
                    }
                };
                row.push(Field { name: name.clone(), value });
            }
            if rows.is_empty() {
                rows.reserve(n);
            }
            rows.push(row);
        }
        pg_sys::SPI_freetuptable(table);
        result.map(|()| rows)
    }
}

/// Bytes a heap allocation of `n` bytes takes (glibc: 16-byte chunks plus a header).
fn heap(n: usize) -> usize {
    n.next_multiple_of(16) + 16
}
