//! Make functions inside the backend: registered modules (compiled once, machine code cached in
//! `dj.module_artifacts`), the database a guest sees (over SPI, as the calling role), and the
//! per-key subtransactions of `dj.populate`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::rc::Rc;
use std::time::Instant;

use datajoint_core::algebra::{self, Catalog, Rel as Expr};
use datajoint_core::dependencies::Table;
use datajoint_core::make::{self, Database, Field, Level, Prepared, Query, Row, Value};
use datajoint_core::naming;
use datajoint_core::populate::{self, QueryError};
use datajoint_core::restriction::RestrictionError;
use datajoint_core::sandbox::SandboxError;
use datajoint_core::values::{self, OutOfRange};
use datajoint_core::{artifact, sql};
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode};

use crate::catalog::{self, TableName};
use crate::error::{DjError, DjResult};
use crate::{gucs, interrupts, security};

// ---------------------------------------------------------------------------------------------
// Modules

thread_local! {
    static LINKER: RefCell<Option<Rc<make::MakeLinker<SpiDb>>>> = const { RefCell::new(None) };
    /// Prepared modules of this backend, by sha256: a key costs an instantiation, not a compile.
    static PREPARED: RefCell<HashMap<String, Rc<Prepared<SpiDb>>>> = RefCell::new(HashMap::new());
}

fn linker() -> DjResult<Rc<make::MakeLinker<SpiDb>>> {
    LINKER.with(|l| {
        if let Some(linker) = l.borrow().as_ref() {
            return Ok(linker.clone());
        }
        let linker = Rc::new(make::linker::<SpiDb>().map_err(DjError::from)?);
        *l.borrow_mut() = Some(linker.clone());
        Ok(linker)
    })
}

/// Compiles component bytes (in a child process: cancellable, its memory capped by
/// `dj.module_compile_memory`) and checks them against the world; returns the machine code.
pub fn validate(bytes: &[u8]) -> DjResult<Vec<u8>> {
    gucs::engine_settings();
    let artifact = make::precompile(bytes, gucs::module_compile_memory(), interrupts::stop_requested)
        .map_err(module_error)?;
    // SAFETY: machine code this backend's engine produced a moment ago, in its own child.
    let component = unsafe { make::deserialize(&artifact) }.map_err(DjError::from)?;
    Prepared::new(&*linker()?, &component).map_err(module_error)?;
    Ok(artifact)
}

/// Registration errors, worded for components (the sandbox's own words are for core modules).
fn module_error(e: SandboxError) -> DjError {
    let world = "Build against wasm-make/wit (world datajoint:make/make@0.1.0): cargo build --target wasm32-wasip2, or componentize-py -w make.";
    let mut err = DjError::from(e.clone());
    match e {
        SandboxError::InvalidModule { message, .. } => {
            err.message = format!("not a valid WebAssembly component: {message}");
            err.hint = world.into();
        }
        SandboxError::UnsupportedImport(what) => {
            err.message = format!("the component needs an import the host does not provide: {what}");
            err.hint = "Make functions may import only WASI 0.2 and datajoint:make/host@0.1.x.".into();
        }
        SandboxError::MissingExport { .. } => {
            err.message = "the component exports no function make".into();
            err.hint = "Export make: func(key: row) -> result<_, string>. ".to_string() + world;
        }
        SandboxError::WrongSignature { found, .. } => {
            err.message = format!("the component's make has the wrong type: {found}");
            err.hint = "Export make: func(key: row) -> result<_, string>. ".to_string() + world;
        }
        _ => {}
    }
    err
}

/// The prepared module with this hash: from this backend's cache, else from the machine-code
/// cache (only when its seal proves this server's extension wrote it), else compiled from its
/// bytes (and the machine code stored, sealed, for every other backend).
pub fn prepared(sha256: &str) -> DjResult<Rc<Prepared<SpiDb>>> {
    if let Some(p) = PREPARED.with(|p| p.borrow().get(sha256).cloned()) {
        return Ok(p);
    }
    gucs::engine_settings();
    let engine = make::engine_fingerprint();
    let key = artifact_key()?;
    let stored = security::as_extension_owner(|| {
        Ok(Spi::connect(|client| -> Result<_, pgrx::spi::Error> {
            let rows = client.select(
                "SELECT a.artifact, a.seal FROM dj.module_artifacts a \
                 WHERE a.sha256 OPERATOR(pg_catalog.=) $1 AND a.engine OPERATOR(pg_catalog.=) $2",
                Some(1),
                &[sha256.into(), engine.as_str().into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let row = rows.first();
            Ok(Some((row.get::<Vec<u8>>(1)?.unwrap_or_default(), row.get::<Vec<u8>>(2)?.unwrap_or_default())))
        })?)
    })?;
    let artifact = match stored {
        Some((artifact, seal)) if artifact::verify(&key, sha256, &engine, &artifact, &seal) => artifact,
        // Missing, or not written by this server's extension: compile again, replace the row.
        _ => {
            let _pin = security::pin();
            let bytes = catalog::read_one::<Vec<u8>>(
                "SELECT v.component FROM dj.module_versions v WHERE v.sha256 OPERATOR(pg_catalog.=) $1",
                &[sha256.into()],
            )?
            .ok_or_else(|| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    format!("module version {sha256} is not registered"),
                    "Register it with dj.register_module(name, bytes), then bind it with dj.set_make.",
                )
            })?;
            let artifact = validate(&bytes)?;
            store_artifact(sha256, &artifact)?;
            artifact
        }
    };
    // SAFETY: sealed by this server's extension for this module and engine, or compiled just now.
    let component = unsafe { make::deserialize(&artifact) }.map_err(DjError::from)?;
    let prepared = Rc::new(Prepared::new(&*linker()?, &component).map_err(module_error)?);
    PREPARED.with(|p| p.borrow_mut().insert(sha256.to_string(), prepared.clone()));
    Ok(prepared)
}

/// Stores the machine code of module `sha256` for this engine, sealed; replaces a row that is
/// there (one that failed its seal).
pub fn store_artifact(sha256: &str, artifact: &[u8]) -> DjResult<()> {
    let engine = make::engine_fingerprint();
    let seal = artifact::seal(&artifact_key()?, sha256, &engine, artifact);
    security::as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO dj.module_artifacts (sha256, engine, artifact, seal) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sha256, engine) DO UPDATE SET artifact = EXCLUDED.artifact, seal = EXCLUDED.seal, \
               compiled_at = pg_catalog.now()",
            &[sha256.into(), engine.as_str().into(), artifact.into(), seal.as_slice().into()],
        )?;
        Ok(())
    })
}

thread_local! {
    static ARTIFACT_KEY: RefCell<Option<Rc<[u8]>>> = const { RefCell::new(None) };
}

/// The server's key for sealing machine code: 32 random bytes in a file of the data directory
/// (readable only by the server's OS user), made by the first backend that needs it.
fn artifact_key() -> DjResult<Rc<[u8]>> {
    if let Some(key) = ARTIFACT_KEY.with(|k| k.borrow().clone()) {
        return Ok(key);
    }
    let failed = |what: &str, e: std::io::Error| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("cannot {what} the key that seals compiled modules: {e}"),
            "The server's data directory must be writable by the server.",
        )
    };
    // SAFETY: DataDir is set before any backend runs queries.
    let dir = unsafe { CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned();
    let path = std::path::Path::new(&dir).join("datajoint_artifact.key");
    let key = match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => key,
        _ => {
            let mut key = vec![0u8; 32];
            // SAFETY: fills the 32-byte buffer.
            if !unsafe { pg_sys::pg_strong_random(key.as_mut_ptr().cast(), key.len()) } {
                return Err(failed("generate", std::io::Error::other("no strong random numbers")));
            }
            // Written aside, then moved into place: a concurrent backend reads a whole key or none.
            let tmp = path.with_extension(format!("key.{}", std::process::id()));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| failed("write", e))?;
                f.write_all(&key).and_then(|_| f.sync_all()).map_err(|e| failed("write", e))?;
            }
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => key,
                // Another backend made it first (or a broken one is there: replace it).
                Err(_) => match std::fs::read(&path) {
                    Ok(theirs) if theirs.len() == 32 => theirs,
                    _ => {
                        std::fs::write(&tmp, &key).map_err(|e| failed("write", e))?;
                        std::fs::rename(&tmp, &path).map_err(|e| failed("write", e))?;
                        key
                    }
                },
            }
        }
    };
    let key: Rc<[u8]> = key.into();
    ARTIFACT_KEY.with(|k| *k.borrow_mut() = Some(key.clone()));
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Tables as a make function sees them

/// A column of a table a make function reads or writes.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub type_oid: pg_sys::Oid,
    pub type_name: String,
    pub in_key: bool,
}

impl Column {
    fn hidden(&self) -> bool {
        self.name.starts_with('_')
    }
}

#[derive(Debug)]
pub struct TableInfo {
    pub name: TableName,
    pub columns: Vec<Column>,
}

impl TableInfo {
    pub fn read(name: &TableName) -> DjResult<TableInfo> {
        let columns = catalog::typed_columns(name)?
            .into_iter()
            .map(|(c, type_oid)| Column { name: c.name, type_oid, type_name: c.sql_type, in_key: c.in_key })
            .collect();
        Ok(TableInfo { name: name.clone(), columns })
    }

    /// Whether rows record the module that made them (datajoint-python's job metadata).
    pub fn has_job_version(&self) -> bool {
        self.column("_job_version").is_some()
    }

    pub fn key(&self) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.in_key).collect()
    }

    fn visible(&self) -> Vec<String> {
        self.columns.iter().filter(|c| !c.hidden()).map(|c| c.name.clone()).collect()
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn table(&self) -> Table {
        Table::new(self.name.schema.clone(), self.name.table.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// A datum of type `type_oid` as the contract's value.
///
/// # Safety
/// `datum` must be a valid datum of `type_oid` (or ignored when `is_null`).
pub unsafe fn to_value(datum: pg_sys::Datum, is_null: bool, type_oid: pg_sys::Oid) -> Value {
    use pgrx::FromDatum;
    if is_null {
        return Value::Null;
    }
    unsafe {
        match type_oid {
            pg_sys::BOOLOID => Value::Boolean(datum.value() != 0),
            pg_sys::INT2OID => Value::Int(i64::from(i16::from_datum(datum, false).unwrap_or_default())),
            pg_sys::INT4OID => Value::Int(i64::from(i32::from_datum(datum, false).unwrap_or_default())),
            pg_sys::INT8OID => Value::Int(i64::from_datum(datum, false).unwrap_or_default()),
            pg_sys::FLOAT4OID => Value::Float(f64::from(f32::from_datum(datum, false).unwrap_or_default())),
            pg_sys::FLOAT8OID => Value::Float(f64::from_datum(datum, false).unwrap_or_default()),
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => {
                Value::Text(String::from_datum(datum, false).unwrap_or_default())
            }
            pg_sys::BYTEAOID => Value::Bytes(Vec::<u8>::from_datum(datum, false).unwrap_or_default()),
            pg_sys::DATEOID => Value::Date(values::date_from_pg(datum.value() as i32)),
            pg_sys::TIMEOID => Value::Time(datum.value() as i64),
            pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
                Value::Timestamp(values::timestamp_from_pg(datum.value() as i64))
            }
            pg_sys::UUIDOID => {
                let uuid = pgrx::Uuid::from_datum(datum, false);
                let b = uuid.as_ref().map(|u| *u.as_bytes()).unwrap_or_default();
                let hi = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                let lo = u64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
                Value::Uuid((hi, lo))
            }
            pg_sys::NUMERICOID => Value::Decimal(output_text(datum, type_oid)),
            pg_sys::JSONOID | pg_sys::JSONBOID => Value::Json(output_text(datum, type_oid)),
            // Enums, names, intervals, arrays, ...: their text form.
            _ => Value::Text(output_text(datum, type_oid)),
        }
    }
}

unsafe fn output_text(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> String {
    unsafe {
        let mut output = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(type_oid, &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        let out = CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        out
    }
}

/// A value through its type's input function (enums, numerics, JSON, dates as text, ...).
/// `text` has no NUL (checked by the caller).
unsafe fn input_text(text: &str, type_oid: pg_sys::Oid) -> pg_sys::Datum {
    let text = CString::new(text).expect("checked for NUL");
    unsafe {
        let mut input = pg_sys::InvalidOid;
        let mut ioparam = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(type_oid, &mut input, &mut ioparam);
        pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut _, ioparam, -1)
    }
}

/// The value as a datum of the column's type (None for NULL), in the current memory context.
/// Values PostgreSQL could not read back are refused: dates, times and timestamps out of its
/// ranges (22008), text with NUL (22021), floats too large for a float4 (22003).
pub fn to_datum(v: &Value, column: &Column, table: &str) -> DjResult<Option<pg_sys::Datum>> {
    let out_of_range = || {
        DjError::new(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!(
                "value {} is out of range for attribute {} ({}) of {table}",
                make::display_value(v),
                column.name,
                column.type_name
            ),
            "Check the value the make function computes, or widen the attribute's type.",
        )
    };
    let bad_datetime = |kind: OutOfRange| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
            format!(
                "value {} is out of range for attribute {} ({}) of {table}",
                make::display_value(v),
                column.name,
                column.type_name
            ),
            format!("PostgreSQL stores {}.", kind.range()),
        )
    };
    let text_ok = |s: &str| -> DjResult<()> {
        if s.contains('\0') {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
                format!("the value for attribute {} of {table} contains a NUL character", column.name),
                "PostgreSQL text cannot hold NUL (\\0); store binary data in a bytea attribute.",
            ));
        }
        Ok(())
    };
    let t = column.type_oid;
    let datum = unsafe {
        match (v, t) {
            (Value::Null, _) => return Ok(None),
            (Value::Boolean(b), pg_sys::BOOLOID) => b.into_datum(),
            (Value::Int(i), pg_sys::INT2OID) => i16::try_from(*i).map_err(|_| out_of_range())?.into_datum(),
            (Value::Int(i), pg_sys::INT4OID) => i32::try_from(*i).map_err(|_| out_of_range())?.into_datum(),
            (Value::Int(i), pg_sys::INT8OID) => i.into_datum(),
            (Value::Int(i), pg_sys::FLOAT4OID) => (*i as f32).into_datum(),
            (Value::Int(i), pg_sys::FLOAT8OID) => (*i as f64).into_datum(),
            (Value::Float(f), pg_sys::FLOAT4OID) => {
                let narrow = *f as f32;
                if narrow.is_infinite() && f.is_finite() {
                    return Err(out_of_range());
                }
                narrow.into_datum()
            }
            (Value::Float(f), pg_sys::FLOAT8OID) => f.into_datum(),
            (Value::Int(i), pg_sys::NUMERICOID) => Some(input_text(&i.to_string(), t)),
            (Value::Float(f), pg_sys::NUMERICOID) => Some(input_text(&numeric_text(*f), t)),
            (Value::Decimal(s), pg_sys::NUMERICOID) => {
                text_ok(s)?;
                Some(input_text(s, t))
            }
            (Value::Text(s), pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID) => {
                text_ok(s)?;
                if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 {
                    s.as_str().into_datum()
                } else {
                    // Through the input function: the server converts (and refuses what its
                    // encoding cannot hold).
                    Some(input_text(s, t))
                }
            }
            (Value::Bytes(b), pg_sys::BYTEAOID) => b.as_slice().into_datum(),
            (Value::Json(s), pg_sys::JSONOID | pg_sys::JSONBOID) => {
                text_ok(s)?;
                Some(input_text(s, t))
            }
            (Value::Date(d), pg_sys::DATEOID) => {
                Some(pg_sys::Datum::from(values::date_to_pg(*d).map_err(bad_datetime)?))
            }
            (Value::Time(us), pg_sys::TIMEOID) => {
                Some(pg_sys::Datum::from(values::time_to_pg(*us).map_err(bad_datetime)?))
            }
            (Value::Timestamp(us), pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID) => {
                Some(pg_sys::Datum::from(values::timestamp_to_pg(*us).map_err(bad_datetime)?))
            }
            (Value::Uuid((hi, lo)), pg_sys::UUIDOID) => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&hi.to_be_bytes());
                bytes[8..].copy_from_slice(&lo.to_be_bytes());
                pgrx::Uuid::from_bytes(bytes).into_datum()
            }
            // Text goes through the type's input function: enums, dates as '2024-01-31', ...
            (Value::Text(s), _) => {
                text_ok(s)?;
                Some(input_text(s, t))
            }
            _ => {
                return Err(DjError::new(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!(
                        "attribute {} of {table} is {}; the make function passed a {} value",
                        column.name,
                        column.type_name,
                        make::kind(v)
                    ),
                    "Pass a value of the attribute's type (or its text form).",
                ))
            }
        }
    };
    Ok(datum)
}

/// A float as numeric input: NaN and the infinities in the words numeric_in reads.
fn numeric_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        f.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw SPI with kept plans (one plan per distinct statement of a populate call)

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
    fn get(&self, sql: &str, types: &[pg_sys::Oid]) -> DjResult<Rc<Plan>> {
        if let Some(p) = self.0.borrow().get(sql) {
            return Ok(p.clone());
        }
        // Guest text that reaches a statement was checked for NUL; this is the last line.
        let text = CString::new(sql).map_err(|_| nul_error("a generated statement"))?;
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
    pub fn fetch_cursor(&self, portal: pg_sys::Portal, n: i64) -> Vec<Row> {
        let _cx = KeepContext::new();
        unsafe {
            pg_sys::SPI_cursor_fetch(portal, true, n);
            rows_of_tuptable(&mut Budget::unlimited()).expect("no budget to exceed")
        }
    }

    /// Runs `sql` with `args` (typed as `types`) for its effect.
    pub fn execute(&self, sql: &str, types: &[pg_sys::Oid], args: &[Option<pg_sys::Datum>]) -> DjResult<()> {
        let plan = self.get(sql, types)?;
        let (mut values, nulls) = parameters(args);
        let _cx = KeepContext::new();
        unsafe {
            let status = pg_sys::SPI_execute_plan(plan.0, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
            if status < 0 {
                return Err(spi_failed("SPI_execute_plan", status, sql));
            }
            if !pg_sys::SPI_tuptable.is_null() {
                pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
            }
        }
        Ok(())
    }

    /// Whether `sql` (an EXISTS query) is true, read with a fresh snapshot (in READ COMMITTED: it
    /// sees what other sessions committed since the statement began).
    pub fn exists(&self, sql: &str, types: &[pg_sys::Oid], args: &[Option<pg_sys::Datum>]) -> DjResult<bool> {
        let plan = self.get(sql, types)?;
        let (mut values, nulls) = parameters(args);
        let _cx = KeepContext::new();
        unsafe {
            let status = pg_sys::SPI_execute_plan(plan.0, values.as_mut_ptr(), nulls.as_ptr(), false, 1);
            if status < 0 {
                return Err(spi_failed("SPI_execute_plan", status, sql));
            }
            let rows = rows_of_tuptable(&mut Budget::unlimited())?;
            Ok(matches!(rows.first().and_then(|r| r.first()).map(|f| &f.value), Some(Value::Boolean(true))))
        }
    }

    /// The rows of the read-only query `sql`, as the contract's values, at most `budget.left`
    /// bytes of them: the first batch comes from one execution (most guest fetches are a row or
    /// a few), a larger result through a cursor a batch at a time, each batch freed as it is
    /// converted, so a query over a huge table fails with 53200 without materializing it.
    pub fn query(
        &self,
        sql: &str,
        types: &[pg_sys::Oid],
        args: &[Option<pg_sys::Datum>],
        budget: &mut Budget,
    ) -> DjResult<Vec<Row>> {
        let plan = self.get(sql, types)?;
        let (mut values, nulls) = parameters(args);
        let _cx = KeepContext::new();
        unsafe {
            let status =
                pg_sys::SPI_execute_plan(plan.0, values.as_mut_ptr(), nulls.as_ptr(), true, FETCH_BATCH);
            if status < 0 {
                return Err(spi_failed("SPI_execute_plan", status, sql));
            }
            let complete = (pg_sys::SPI_processed as i64) < FETCH_BATCH;
            let mut rows = rows_of_tuptable(budget)?;
            if complete {
                return Ok(rows);
            }
            // More rows than one batch: read on, past the first batch, through a cursor (the same
            // snapshot: read-only SPI takes no new one).
            let portal =
                pg_sys::SPI_cursor_open(std::ptr::null(), plan.0, values.as_mut_ptr(), nulls.as_ptr(), true);
            if portal.is_null() {
                return Err(spi_failed("SPI_cursor_open", pg_sys::SPI_result, sql));
            }
            pg_sys::SPI_cursor_move(portal, true, FETCH_BATCH);
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

fn parameters(args: &[Option<pg_sys::Datum>]) -> (Vec<pg_sys::Datum>, Vec<std::os::raw::c_char>) {
    let values = args.iter().map(|a| a.unwrap_or(pg_sys::Datum::from(0))).collect();
    let nulls = args.iter().map(|a| if a.is_some() { b' ' as _ } else { b'n' as _ }).collect();
    (values, nulls)
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
                let payload = if *varlena && !is_null { heap(pg_sys::toast_raw_datum_size(datum)) } else { 32 };
                if !budget.charge(std::mem::size_of::<Field>() + heap(name.len()) + payload) {
                    result = Err(over_budget(budget));
                    break 'rows;
                }
                row.push(Field { name: name.clone(), value: to_value(datum, is_null, *type_oid) });
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

/// A guest's text that would reach SQL with a NUL in it.
fn nul_error(what: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        format!("{what} contains a NUL character"),
        "Remove the \\0 from the make function's query: SQL text cannot hold it.",
    )
}

// ---------------------------------------------------------------------------------------------
// The database of one populate call

/// What a populate call knows: the target, its parts, what its make may read, the caches.
pub struct Context {
    pub target: Rc<TableInfo>,
    pub parts: Vec<Rc<TableInfo>>,
    /// Ancestors of the target and of its parts (the target and its parts excluded).
    pub readable: Vec<TableName>,
    pub version: String,
    pub plans: Plans,
    tables: RefCell<HashMap<String, Rc<TableInfo>>>,
    fetches: RefCell<HashMap<FetchKey, Rc<FetchStatement>>>,
}

/// A guest query as the cache knows it: relation, restrictions, attributes, order, limit, fetch1.
type FetchKey = (String, Vec<String>, Vec<String>, Vec<String>, Option<u64>, bool);

/// A checked guest query: its SQL and the key attributes bound to its parameters.
struct FetchStatement {
    /// What the query reads, for messages: a table's name or an expression.
    label: String,
    sql: String,
    key_columns: Vec<Column>,
    types: Vec<pg_sys::Oid>,
}

impl Context {
    pub fn new(
        target: TableInfo,
        parts: Vec<TableInfo>,
        readable: Vec<TableName>,
        version: String,
    ) -> Context {
        Context {
            target: Rc::new(target),
            parts: parts.into_iter().map(Rc::new).collect(),
            readable,
            version,
            plans: Plans::default(),
            tables: RefCell::new(HashMap::new()),
            fetches: RefCell::new(HashMap::new()),
        }
    }

    fn schema(&self) -> &str {
        &self.target.name.schema
    }

    /// A table named by the guest: `Class`, `Master.Part`, `Part` (of the target), `schema.Class`,
    /// `schema.table`. Names without a schema are in the target's schema; otherwise as every dj
    /// function reads table names (catalog::resolve).
    fn resolve(&self, name: &str) -> DjResult<TableName> {
        let schema = sql::ident(self.schema());
        match catalog::split_name(name).unwrap_or_default().as_slice() {
            [one] => catalog::resolve(&format!("{schema}.{}", sql::ident(one))).or_else(|missing| {
                // A bare part name: a part of the target.
                let part = naming::part_table_name(&self.target.name.table, one);
                self.parts.iter().find(|p| p.name.table == part).map(|p| p.name.clone()).ok_or(missing)
            }),
            [a, b] if naming::is_class_name(a) && naming::is_class_name(b) => {
                catalog::resolve(&format!("{schema}.{a}.{b}"))
            }
            _ => catalog::resolve(name),
        }
    }

    fn table(&self, name: &str) -> DjResult<Rc<TableInfo>> {
        if let Some(t) = self.tables.borrow().get(name) {
            return Ok(t.clone());
        }
        let resolved = self.resolve(name)?;
        let info = if resolved == self.target.name {
            self.target.clone()
        } else if let Some(p) = self.parts.iter().find(|p| p.name == resolved) {
            p.clone()
        } else {
            Rc::new(TableInfo::read(&resolved)?)
        };
        self.tables.borrow_mut().insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// The statement of a guest's query: checked (readable table, known attributes, a condition
    /// re-emitted from its syntax tree) once per populate call, not once per key.
    fn fetch_statement(&self, q: Query, one: bool, key: &Row) -> DjResult<Rc<FetchStatement>> {
        let texts =
            std::iter::once(&q.relation).chain(&q.restrictions).chain(&q.attributes).chain(&q.order_by);
        if texts.into_iter().any(|t| t.contains('\0')) {
            return Err(nul_error("the make function's query"));
        }
        let cache_key: FetchKey = (q.relation, q.restrictions, q.attributes, q.order_by, q.limit, one);
        if let Some(f) = self.fetches.borrow().get(&cache_key) {
            return Ok(f.clone());
        }
        let (relation, restrictions, attributes, order_by, limit, _) = &cache_key;
        let limit = if one { Some(2) } else { *limit };
        if let Some(expression) = relation_expression(relation)? {
            let statement = Rc::new(self.expression_statement(
                expression,
                restrictions,
                attributes,
                order_by,
                limit,
                key,
            )?);
            self.fetches.borrow_mut().insert(cache_key, statement.clone());
            return Ok(statement);
        }
        let info = self.table(relation)?;
        if !self.readable.contains(&info.name) {
            return Err(self.unreadable(&info.name));
        }
        // Every key of a populate call has the same attributes: the shared ones are fixed.
        let key_columns: Vec<Column> =
            info.columns.iter().filter(|c| key.iter().any(|f| f.name == c.name)).cloned().collect();
        let key_names: Vec<String> = key_columns.iter().map(|c| c.name.clone()).collect();
        let sql = populate::fetch_sql(
            &info.table(),
            &info.visible(),
            &key_names,
            attributes,
            restrictions,
            order_by,
            limit,
        )
        .map_err(|e| query_error(e, &info.name.qualified()))?;
        let types = key_columns.iter().map(|c| c.type_oid).collect();
        let statement = Rc::new(FetchStatement { label: info.name.qualified(), sql, key_columns, types });
        self.fetches.borrow_mut().insert(cache_key, statement.clone());
        Ok(statement)
    }

    /// A guest query over a relation expression (`aggr(Recording, Recording.Channel, 'n =
    /// count(*)')`): every table it names must be readable; the result is restricted by the key
    /// on the attributes it shares with it, like a table.
    fn expression_statement(
        &self,
        mut expression: Expr,
        restrictions: &[String],
        attributes: &[String],
        order_by: &[String],
        limit: Option<u64>,
        key: &Row,
    ) -> DjResult<FetchStatement> {
        let compiled = algebra::compile(&mut expression, &mut GuestCatalog { ctx: self })?;
        let label = expression.to_string();
        let heading: Vec<String> = compiled.heading.iter().map(|a| a.name.clone()).collect();
        let key_columns: Vec<Column> = self
            .target
            .columns
            .iter()
            .filter(|c| key.iter().any(|f| f.name == c.name) && heading.contains(&c.name))
            .cloned()
            .collect();
        let key_names: Vec<String> = key_columns.iter().map(|c| c.name.clone()).collect();
        let from = format!("({}) AS q", compiled.sql);
        let sql =
            populate::fetch_sql_from(&from, &heading, &key_names, attributes, restrictions, order_by, limit)
                .map_err(|e| query_error(e, &label))?;
        let types = key_columns.iter().map(|c| c.type_oid).collect();
        Ok(FetchStatement { label, sql, key_columns, types })
    }

    fn unreadable(&self, t: &TableName) -> DjError {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "the make function of {} may not read {}: it is not an ancestor of the target",
                self.target.name.qualified(),
                t.qualified()
            ),
            "A make function reads only the tables its target depends on (dj.ancestors lists them).",
        )
    }

    fn writable(&self, t: &TableName) -> bool {
        *t == self.target.name || self.parts.iter().any(|p| p.name == *t)
    }
}

/// The database as one key's make call sees it.
pub struct SpiDb {
    pub ctx: Rc<Context>,
    pub key: Row,
    pub started: Instant,
    pub started_at: i64,
}

// SAFETY: the store holding an SpiDb is created, used and dropped on the backend's main thread
// within one populate call; wasmtime only needs Send for stores it might move across threads,
// which this extension never does.
unsafe impl Send for SpiDb {}

impl SpiDb {
    fn key_value(&self, name: &str) -> Option<&Value> {
        self.key.iter().find(|f| f.name == name).map(|f| &f.value)
    }
}

/// The guest's `relation` as an expression, when it is one (`Recording * Session`); `None` for a
/// plain table name, which the host resolves relative to the target's schema as before.
fn relation_expression(relation: &str) -> DjResult<Option<Expr>> {
    if !relation.contains(['*', '&', '-', '+', '(', '[', '\'']) {
        return Ok(None);
    }
    let parsed = algebra::parse(relation).map_err(|e| {
        let message = format!("cannot read the expression {relation}: {} (at: {})", e.message, e.fragment);
        DjError { message, ..DjError::from(e) }
    })?;
    match parsed {
        Expr::Table(_) => Ok(None),
        expression => Ok(Some(expression)),
    }
}

/// Tables named in a guest's expression: resolved as the guest's table names are, and readable
/// only when the make function may read them.
struct GuestCatalog<'a> {
    ctx: &'a Context,
}

impl Catalog for GuestCatalog<'_> {
    type Error = DjError;

    fn table(&mut self, name: &str) -> DjResult<algebra::TableInfo> {
        let t = self.ctx.resolve(name)?;
        if !self.ctx.readable.contains(&t) {
            return Err(self.ctx.unreadable(&t));
        }
        crate::api::algebra::table_info_of(&t)
    }
}

fn query_error(e: QueryError, relation: &str) -> DjError {
    match e {
        QueryError::UnknownAttribute { attribute, available } => DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("{relation} has no attribute {attribute}"),
            format!("Its attributes: {}.", available.join(", ")),
        ),
        QueryError::BadOrder(term) => DjError::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("\"{term}\" is not an order term"),
            "Write an attribute name, optionally followed by asc or desc.",
        ),
        QueryError::Condition(e) => restriction_error(e, relation),
    }
}

fn restriction_error(e: RestrictionError, relation: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        format!("restriction on {relation}: {}", e.message),
        e.hint.clone(),
    )
}

impl Database for SpiDb {
    type Error = DjError;

    fn log(&mut self, level: Level, message: String) {
        // A message is text for the log and the client: a NUL would end it early.
        let message = message.replace('\0', "\\0");
        match level {
            Level::Debug => pgrx::debug1!("{message}"),
            Level::Info => pgrx::info!("{message}"),
            Level::Notice => pgrx::notice!("{message}"),
            Level::Warning => pgrx::warning!("{message}"),
        }
    }

    fn fetch(&mut self, q: Query, one: bool, budget: usize) -> Result<Vec<Row>, DjError> {
        let fetch = self.ctx.fetch_statement(q, one, &self.key)?;
        let mut args = Vec::with_capacity(fetch.key_columns.len());
        for c in &fetch.key_columns {
            args.push(to_datum(self.key_value(&c.name).expect("shared with the key"), c, &fetch.label)?);
        }
        let rows = self.ctx.plans.query(&fetch.sql, &fetch.types, &args, &mut Budget::new(budget))?;
        if one && rows.len() != 1 {
            // PL/pgSQL's SELECT INTO STRICT codes: P0002 no row, P0003 several.
            let code = if rows.is_empty() {
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND
            } else {
                PgSqlErrorCode::ERRCODE_TOO_MANY_ROWS
            };
            return Err(DjError::new(
                code,
                format!(
                    "fetch1 from {} found {} rows for key ({})",
                    fetch.label,
                    if rows.is_empty() { "no".to_string() } else { "several".to_string() },
                    make::display_row(&self.key)
                ),
                "fetch1 expects exactly one row: restrict the query further, or use fetch.",
            ));
        }
        Ok(rows)
    }

    fn insert(&mut self, table: String, rows: Vec<Row>) -> Result<u64, DjError> {
        let info = self.ctx.table(&table)?;
        if !self.ctx.writable(&info.name) {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "the make function of {} may not insert into {}",
                    self.ctx.target.name.qualified(),
                    info.name.qualified()
                ),
                "A make function inserts only into its target and the target's parts.",
            ));
        }
        let is_target = info.name == self.ctx.target.name;
        let qualified = info.name.qualified();
        let mut count = 0;
        for row in rows {
            let mut columns: Vec<&Column> = Vec::new();
            let mut args: Vec<Option<pg_sys::Datum>> = Vec::new();
            for f in &row {
                let Some(c) = info.column(&f.name).filter(|c| !c.hidden()) else {
                    return Err(DjError::new(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!("{qualified} has no attribute {}", f.name),
                        format!("Its attributes: {}.", info.visible().join(", ")),
                    ));
                };
                if columns.iter().any(|d| d.name == c.name) {
                    return Err(DjError::new(
                        PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                        format!("attribute {} appears twice in a row for {qualified}", f.name),
                        "Give each attribute once per row.",
                    ));
                }
                if let Some(k) = self.key_value(&c.name) {
                    if k != &f.value {
                        return Err(DjError::new(
                            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                            format!(
                                "the make function inserted {}={} into {qualified}, but its key has {}={}",
                                c.name,
                                make::display_value(&f.value),
                                c.name,
                                make::display_value(k)
                            ),
                            "A make call writes only rows of its own key.",
                        ));
                    }
                }
                columns.push(c);
                args.push(to_datum(&f.value, c, &qualified)?);
            }
            // Key attributes the row left out come from the key.
            for c in &info.columns {
                if columns.iter().any(|d| d.name == c.name) {
                    continue;
                }
                if let Some(k) = self.key_value(&c.name) {
                    columns.push(c);
                    args.push(to_datum(k, c, &qualified)?);
                }
            }
            if is_target {
                for (name, value) in [
                    ("_job_start_time", Value::Timestamp(self.started_at)),
                    ("_job_duration", Value::Float(self.started.elapsed().as_secs_f64())),
                    ("_job_version", Value::Text(self.ctx.version.clone())),
                ] {
                    if let Some(c) = info.column(name) {
                        columns.push(c);
                        args.push(to_datum(&value, c, &qualified)?);
                    }
                }
            }
            let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
            let types: Vec<pg_sys::Oid> = columns.iter().map(|c| c.type_oid).collect();
            let sql = populate::insert_sql(&info.table(), &names);
            self.ctx.plans.execute(&sql, &types, &args)?;
            count += 1;
        }
        Ok(count)
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
