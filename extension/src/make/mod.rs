//! Make functions inside the backend: registered modules (`modules`), the database a guest sees
//! as the SPI [`Backend`] of the core's make host (`spi`, `values` and [`SpiBackend`] here), and
//! the per-key subtransactions of `dj.populate`. The rules a make runs under (what it may read and
//! write, how its rows are shaped, how its failures read) are `datajoint_core::host`'s.

use std::rc::Rc;

use datajoint_core::algebra;
use datajoint_core::dependencies::Table;
use datajoint_core::host::{self, Backend, Statement, TableInfo};
use datajoint_core::make::{Level, Row, Value};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::catalog;
use crate::error::{DjError, DjResult};
use crate::headings;

mod modules;
mod objects;
mod pending;
mod run;
pub mod source;
mod spi;
mod values;

pub use modules::{prepared, store_artifact, validate};
pub use run::Run;
pub use spi::{Budget, Plans};
pub use values::to_datum;

/// The make host of the backend.
pub type SpiHost = host::MakeHost<SpiBackend>;

/// A table's columns with their types' oids, as a make function reads and writes them.
pub fn describe(name: &Table) -> DjResult<TableInfo> {
    let columns = catalog::typed_columns(name)?
        .into_iter()
        .map(|(c, type_oid)| host::Column {
            store: crate::objects::is_store_column(c.comment.as_deref()),
            name: c.name,
            type_name: c.sql_type,
            type_id: type_oid.to_u32(),
            in_key: c.in_key,
        })
        .collect();
    Ok(TableInfo { table: name.clone(), columns })
}

/// A statement's arguments as datums (in the current memory context).
pub fn datums(statement: &Statement, args: &[&Value]) -> DjResult<Vec<Option<pg_sys::Datum>>> {
    statement.params.iter().zip(args).map(|(c, v)| to_datum(v, c, &statement.label)).collect()
}

/// The database over SPI, as the calling role, with the statements of one populate run kept
/// planned.
pub struct SpiBackend {
    pub plans: Rc<Plans>,
    pub stores: objects::Stores,
    /// Where a populate run holds the rows of its keys back (None: each row is inserted at once).
    pub pending: Option<Rc<std::cell::RefCell<pending::Pending>>>,
}

impl SpiBackend {
    pub fn new(plans: Rc<Plans>) -> SpiBackend {
        SpiBackend { plans, stores: objects::Stores::default(), pending: None }
    }
}

// SAFETY: a store holding an SpiBackend is created, used and dropped on the backend's main
// thread within one populate call; wasmtime only needs Send for stores it might move across
// threads, which this extension never does.
unsafe impl Send for SpiBackend {}

impl Backend for SpiBackend {
    type Error = DjError;

    fn resolve(&mut self, name: &str) -> DjResult<Table> {
        catalog::resolve(name)
    }

    fn describe(&mut self, table: &Table) -> DjResult<TableInfo> {
        describe(table)
    }

    fn heading(&mut self, table: &Table) -> DjResult<algebra::TableInfo> {
        headings::table_info_of(table)
    }

    fn log(&mut self, level: Level, message: &str) {
        match level {
            Level::Debug => pgrx::debug1!("{message}"),
            Level::Info => pgrx::info!("{message}"),
            Level::Notice => pgrx::notice!("{message}"),
            Level::Warning => pgrx::warning!("{message}"),
        }
    }

    fn query(&mut self, statement: &Statement, args: &[&Value], budget: usize) -> DjResult<Vec<Row>> {
        let args = datums(statement, args)?;
        self.plans.query(statement, &args, &mut Budget::new(budget))
    }

    fn query_keys(
        &mut self,
        statement: &Statement,
        args: &[Vec<&Value>],
        budget: usize,
    ) -> DjResult<Vec<Row>> {
        // Each parameter is an array of its column's type (prepared as such).
        let mut params = Vec::with_capacity(args.len());
        let mut datums = Vec::with_capacity(args.len());
        for (column, values) in statement.params.iter().zip(args) {
            let (array_type, datum) = values::array_datum(values, column, &statement.label)?;
            params.push(host::Column { type_id: array_type.to_u32(), ..column.clone() });
            datums.push(Some(datum));
        }
        let arrays = Statement { params, ..statement.clone() };
        self.plans.query_all(&arrays, &datums, &mut Budget::new(budget))
    }

    fn execute(&mut self, statement: &Statement, args: &[&Value]) -> DjResult<()> {
        let args = datums(statement, args)?;
        self.plans.execute(statement, &args)
    }

    fn insert(&mut self, table: &Table, statement: &Statement, args: &[&Value]) -> DjResult<()> {
        match &self.pending {
            Some(pending) => pending.borrow_mut().push(table, statement, args),
            None => self.execute(statement, args),
        }
    }

    fn store_name(&mut self, store: Option<&str>) -> String {
        crate::objects::store_name(store)
    }

    fn object_size(&mut self, store: Option<&str>, key: &str) -> DjResult<Option<u64>> {
        Ok(self.stores.get(store)?.head(key)?.map(|m| m.size))
    }

    fn object_range(
        &mut self,
        store: Option<&str>,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> DjResult<Vec<u8>> {
        Ok(self.stores.get(store)?.get_range(key, range)?)
    }

    fn object_put(
        &mut self,
        table: &Table,
        attribute: &str,
        key: &Row,
        filename: Option<&str>,
        content: host::Content,
    ) -> DjResult<String> {
        objects::put(table, attribute, key, filename, content)
    }

    fn spool_path(&mut self) -> DjResult<std::path::PathBuf> {
        objects::spool_path()
    }

    fn spool_limit(&mut self) -> Option<u64> {
        // SAFETY: a plain read of a GUC variable (kB; -1: no limit).
        let temp_file_limit = unsafe { pg_sys::temp_file_limit };
        let own = crate::gucs::MAKE_UPLOAD_LIMIT.get() as u64 * 1024;
        Some(if temp_file_limit >= 0 { own.min(temp_file_limit as u64 * 1024) } else { own })
    }
}

// ---------------------------------------------------------------------------------------------
// Subtransactions

/// Runs `f` in a subtransaction: committed into the enclosing transaction when `f` returns
/// Ok, rolled back when it returns Err or raises (the raised error is returned as caught).
pub fn in_subtransaction<T>(f: impl FnOnce() -> Result<T, DjError>) -> Result<T, Failure> {
    unsafe {
        let cx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cx);
        // A Postgres ERROR unwinds out of `f`; the subtransaction's rollback then cleans up.
        let f = std::panic::AssertUnwindSafe(f);
        let result = PgTryBuilder::new(move || {
            let f = f;
            (f.0)().map_err(Failure::Dj)
        })
        .catch_others(|e| Err(Failure::Caught(e)))
        .execute();
        pg_sys::MemoryContextSwitchTo(cx);
        match result {
            Ok(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(cx);
                pg_sys::CurrentResourceOwner = owner;
                Ok(v)
            }
            Err(e) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(cx);
                pg_sys::CurrentResourceOwner = owner;
                Err(e)
            }
        }
    }
}

/// Why a key failed.
pub enum Failure {
    Dj(DjError),
    Caught(pg_sys::panic::CaughtError),
}

impl From<pgrx::spi::Error> for Failure {
    fn from(e: pgrx::spi::Error) -> Self {
        Failure::Dj(DjError::from(e))
    }
}

impl From<DjError> for Failure {
    fn from(e: DjError) -> Self {
        Failure::Dj(e)
    }
}

impl Failure {
    /// SQLSTATE, message, detail, hint.
    pub fn parts(&self) -> (PgSqlErrorCode, String, Option<String>, Option<String>) {
        use pg_sys::panic::CaughtError::*;
        match self {
            Failure::Dj(e) => (e.code, e.message.clone(), e.detail.clone(), Some(e.hint.clone())),
            Failure::Caught(PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. }) => (
                r.sql_error_code(),
                r.message().to_string(),
                r.detail().map(str::to_string),
                r.hint().map(str::to_string),
            ),
        }
    }
}
