//! Make functions inside the backend: registered modules (`modules`), the database a guest sees
//! (over SPI, as the calling role: `spi`, `values` and the `Context` here), and the per-key
//! subtransactions of `dj.populate`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use datajoint_core::algebra::{self, Catalog, Rel as Expr};
use datajoint_core::dependencies::Table;
use datajoint_core::make::{self, Database, Level, Query, Row, Value};
use datajoint_core::naming;
use datajoint_core::populate::{self, QueryError};
use datajoint_core::restriction::RestrictionError;
use datajoint_core::sql;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::catalog::{self, TableName};
use crate::error::{DjError, DjResult};

mod modules;
mod spi;
mod values;

pub use modules::{prepared, store_artifact, validate};
use spi::nul_error;
pub use spi::{Budget, Plans};
pub use values::to_datum;

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
