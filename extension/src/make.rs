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
use datajoint_core::sql;
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode};

use crate::catalog::{self, TableName};
use crate::error::{DjError, DjResult};

/// Days and microseconds between the Unix epoch (the contract's) and 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

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

/// Compiles and checks component bytes against the world; returns the machine code to cache.
pub fn validate(bytes: &[u8]) -> DjResult<Vec<u8>> {
    let component = make::compile(bytes).map_err(module_error)?;
    Prepared::new(&*linker()?, &component).map_err(module_error)?;
    make::serialize(&component).map_err(DjError::from)
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

/// Runs `f` as the extension's owner (a superuser): for the machine-code cache, which no other
/// role may read or write (wasmtime runs that code as it is). The caller's identity comes back
/// on every exit, errors included.
pub fn as_extension_owner<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let owner = catalog::read_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'datajoint'",
        &[],
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let _restore = Restore(user, context);
    f()
}

/// The prepared module with this hash: from this backend's cache, else from the machine-code
/// cache, else compiled from its bytes (and the machine code stored for every other backend).
pub fn prepared(module: &str, sha256: &str) -> DjResult<Rc<Prepared<SpiDb>>> {
    if let Some(p) = PREPARED.with(|p| p.borrow().get(sha256).cloned()) {
        return Ok(p);
    }
    let engine = make::engine_fingerprint();
    let artifact = as_extension_owner(|| {
        catalog::read_one::<Vec<u8>>(
            "SELECT artifact FROM dj.module_artifacts WHERE sha256 = $1 AND engine = $2",
            &[sha256.into(), engine.as_str().into()],
        )
    })?;
    let component = match artifact {
        // SAFETY: only the extension writes dj.module_artifacts (as its owner, from code it compiled
        // itself under this engine fingerprint); no other role may write it.
        Some(bytes) => unsafe { make::deserialize(&bytes) }.map_err(DjError::from)?,
        None => {
            let bytes = catalog::read_one::<Vec<u8>>(
                "SELECT component FROM dj.modules WHERE name = $1 AND sha256 = $2",
                &[module.into(), sha256.into()],
            )?
            .ok_or_else(|| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    format!("module {module} ({sha256}) is not registered"),
                    "Register it with dj.register_module(name, bytes).",
                )
            })?;
            let component = make::compile(&bytes).map_err(module_error)?;
            store_artifact(sha256, &make::serialize(&component)?)?;
            component
        }
    };
    let prepared = Rc::new(Prepared::new(&*linker()?, &component).map_err(module_error)?);
    PREPARED.with(|p| p.borrow_mut().insert(sha256.to_string(), prepared.clone()));
    Ok(prepared)
}

pub fn store_artifact(sha256: &str, artifact: &[u8]) -> DjResult<()> {
    let engine = make::engine_fingerprint();
    as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO dj.module_artifacts (sha256, engine, artifact) VALUES ($1, $2, $3) \
             ON CONFLICT (sha256, engine) DO NOTHING",
            &[sha256.into(), engine.as_str().into(), artifact.into()],
        )
    })?;
    Ok(())
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
            pg_sys::DATEOID => Value::Date((datum.value() as i32).saturating_add(PG_EPOCH_DAYS)),
            pg_sys::TIMEOID => Value::Time(datum.value() as i64),
            pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
                Value::Timestamp((datum.value() as i64).saturating_add(PG_EPOCH_MICROS))
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

unsafe fn input_text(text: &str, type_oid: pg_sys::Oid) -> pg_sys::Datum {
    let text = CString::new(text.replace('\0', "")).expect("no NUL left");
    unsafe {
        let mut input = pg_sys::InvalidOid;
        let mut ioparam = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(type_oid, &mut input, &mut ioparam);
        pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut _, ioparam, -1)
    }
}

/// The value as a datum of the column's type (None for NULL), in the current memory context.
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
            (Value::Float(f), pg_sys::FLOAT4OID) => (*f as f32).into_datum(),
            (Value::Float(f), pg_sys::FLOAT8OID) => f.into_datum(),
            (Value::Int(i), pg_sys::NUMERICOID) => Some(input_text(&i.to_string(), t)),
            (Value::Float(f), pg_sys::NUMERICOID) => Some(input_text(&f.to_string(), t)),
            (Value::Decimal(s), pg_sys::NUMERICOID) => Some(input_text(s, t)),
            (Value::Text(s), pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID) => {
                s.as_str().into_datum()
            }
            (Value::Bytes(b), pg_sys::BYTEAOID) => b.as_slice().into_datum(),
            (Value::Json(s), pg_sys::JSONOID | pg_sys::JSONBOID) => Some(input_text(s, t)),
            (Value::Date(d), pg_sys::DATEOID) => Some(pg_sys::Datum::from(d.saturating_sub(PG_EPOCH_DAYS))),
            (Value::Time(us), pg_sys::TIMEOID) => Some(pg_sys::Datum::from(*us)),
            (Value::Timestamp(us), pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID) => {
                Some(pg_sys::Datum::from(us.saturating_sub(PG_EPOCH_MICROS)))
            }
            (Value::Uuid((hi, lo)), pg_sys::UUIDOID) => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&hi.to_be_bytes());
                bytes[8..].copy_from_slice(&lo.to_be_bytes());
                pgrx::Uuid::from_bytes(bytes).into_datum()
            }
            // Text goes through the type's input function: enums, dates as '2024-01-31', ...
            (Value::Text(s), _) => Some(input_text(s, t)),
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

// ---------------------------------------------------------------------------------------------
// Raw SPI with kept plans (one plan per distinct statement of a populate call)

pub struct Plan(pg_sys::SPIPlanPtr);

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}

#[derive(Default)]
pub struct Plans(RefCell<HashMap<String, Rc<Plan>>>);

impl Plans {
    fn get(&self, sql: &str, types: &[pg_sys::Oid]) -> Rc<Plan> {
        if let Some(p) = self.0.borrow().get(sql) {
            return p.clone();
        }
        let text = CString::new(sql).expect("generated SQL has no NUL");
        let plan = unsafe {
            let plan = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_ptr() as *mut _);
            if plan.is_null() {
                panic!("SPI_prepare failed for {sql}");
            }
            pg_sys::SPI_keepplan(plan);
            Rc::new(Plan(plan))
        };
        self.0.borrow_mut().insert(sql.to_string(), plan.clone());
        plan
    }

    /// Opens a cursor over `sql` (no parameters) in the current transaction; it outlives the
    /// subtransactions run while reading it.
    pub fn open_cursor(&self, sql: &str) -> pg_sys::Portal {
        let plan = self.get(sql, &[]);
        let _cx = KeepContext::new();
        unsafe {
            pg_sys::SPI_cursor_open(std::ptr::null(), plan.0, std::ptr::null_mut(), std::ptr::null(), false)
        }
    }

    /// The next `n` rows of a cursor (none at the end).
    pub fn fetch_cursor(&self, portal: pg_sys::Portal, n: i64) -> Vec<Row> {
        let _cx = KeepContext::new();
        unsafe {
            pg_sys::SPI_cursor_fetch(portal, true, n);
            rows_of_tuptable()
        }
    }

    /// Runs `sql` with `args` (typed as `types`) and returns its rows as the contract's values.
    pub fn query(
        &self,
        sql: &str,
        types: &[pg_sys::Oid],
        args: &[Option<pg_sys::Datum>],
        read_only: bool,
        limit: i64,
    ) -> Vec<Row> {
        let plan = self.get(sql, types);
        let mut values: Vec<pg_sys::Datum> =
            args.iter().map(|a| a.unwrap_or(pg_sys::Datum::from(0))).collect();
        let nulls: Vec<std::os::raw::c_char> =
            args.iter().map(|a| if a.is_some() { b' ' as _ } else { b'n' as _ }).collect();
        let _cx = KeepContext::new();
        let rows;
        unsafe {
            let status =
                pg_sys::SPI_execute_plan(plan.0, values.as_mut_ptr(), nulls.as_ptr(), read_only, limit);
            if status < 0 {
                panic!("SPI_execute_plan failed with {status} for {sql}");
            }
            rows = rows_of_tuptable();
        }
        rows
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

/// The rows of `SPI_tuptable` as the contract's values; frees the table.
unsafe fn rows_of_tuptable() -> Vec<Row> {
    let mut rows = Vec::new();
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() {
            return rows;
        }
        let desc = (*table).tupdesc;
        let natts = (*desc).natts as usize;
        let n = pg_sys::SPI_processed as usize;
        rows.reserve(n);
        let columns: Vec<(String, pg_sys::Oid)> = (*desc)
            .attrs
            .as_slice(natts)
            .iter()
            .map(|attr| {
                (CStr::from_ptr(attr.attname.data.as_ptr()).to_string_lossy().into_owned(), attr.atttypid)
            })
            .collect();
        for i in 0..n {
            let tuple = *(*table).vals.add(i);
            let mut row = Vec::with_capacity(natts);
            for (a, (name, type_oid)) in columns.iter().enumerate() {
                let mut is_null = false;
                let datum = pg_sys::SPI_getbinval(tuple, desc, (a + 1) as i32, &mut is_null);
                row.push(Field { name: name.clone(), value: to_value(datum, is_null, *type_oid) });
            }
            rows.push(row);
        }
        pg_sys::SPI_freetuptable(table);
    }
    rows
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
        match level {
            Level::Debug => pgrx::debug1!("{message}"),
            Level::Info => pgrx::info!("{message}"),
            Level::Notice => pgrx::notice!("{message}"),
            Level::Warning => pgrx::warning!("{message}"),
        }
    }

    fn fetch(&mut self, q: Query, one: bool) -> Result<Vec<Row>, DjError> {
        let fetch = self.ctx.fetch_statement(q, one, &self.key)?;
        let mut args = Vec::with_capacity(fetch.key_columns.len());
        for c in &fetch.key_columns {
            args.push(to_datum(self.key_value(&c.name).expect("shared with the key"), c, &fetch.label)?);
        }
        let rows = self.ctx.plans.query(&fetch.sql, &fetch.types, &args, true, 0);
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
            self.ctx.plans.query(&sql, &types, &args, false, 0);
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
