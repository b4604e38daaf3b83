//! The make runtime's host: the rules every host of a make function applies, whatever runs it
//! (`dj.populate` in a backend, a background worker, a worker on another machine).
//!
//! A make function sees nothing but the host interface. Through it, it reads only the target's
//! ancestors ([`Scope`]), restricted by its key; it writes only the target and its parts, rows of
//! its own key, with the job metadata filled in; fetch1 gets exactly one row. [`MakeHost`]
//! implements the guest's [`Database`] with these rules over a [`Backend`], which only resolves
//! names, describes tables and runs the statements built here (the extension's backend runs
//! them over SPI, as the role that asked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::algebra::{self, AlgebraError, Catalog};
use crate::dependencies::Table;
use crate::make::{Database, Level, ObjectInfo, Query, Row, Value};

mod batch;
mod error;
#[cfg(test)]
mod object_tests;
mod objects;
mod scope;
mod statements;
mod tables;
#[cfg(test)]
mod tests;

pub use batch::{rows_bytes, Batchable, Prefetched, MAX_BATCHED, PREFETCH_BUDGET};
pub use error::{failure, truncated, HostError, Kind, GUEST_MESSAGE, STDERR_TAIL};
pub use objects::{key_value, Content, Objects, SpoolFile, MAX_READ, MAX_UPLOADS, SPOOL_MEMORY};
pub use scope::{Lookup, Scope};
pub use statements::{
    check_one, insert_many_sql, insert_row, insert_statement, insert_values, nul_error, JobMetadata,
    Statement, KEY_ORDINAL,
};
pub use tables::{Column, TableInfo};

/// What a host needs from the database: names, descriptions, and running statements as the role
/// the make runs for.
pub trait Backend: Send + 'static {
    type Error: From<HostError> + From<AlgebraError> + Send + 'static;
    /// The table `name` means, read as every dj function reads table names (`schema.Class`,
    /// `schema.Master.Part`, `"schema"."table"`); an error when there is none.
    fn resolve(&mut self, name: &str) -> Result<Table, Self::Error>;
    /// A table's columns.
    fn describe(&mut self, table: &Table) -> Result<TableInfo, Self::Error>;
    /// A table as the algebra compiles it (visible attributes with their lineage).
    fn heading(&mut self, table: &Table) -> Result<algebra::TableInfo, Self::Error>;
    /// A guest's log line (NUL already replaced).
    fn log(&mut self, level: Level, message: &str);
    /// The rows of a read-only statement, taking at most `budget` bytes of host memory (refused
    /// without materializing them when they need more).
    fn query(
        &mut self,
        statement: &Statement,
        args: &[&Value],
        budget: usize,
    ) -> Result<Vec<Row>, Self::Error>;
    /// The rows of a statement that reads for many keys at once (see [`Session::prefetch`]):
    /// parameter `i` takes the array of the values `args[i]`, elements of `statement.params[i]`'s
    /// type; at most `budget` bytes of rows, as [`Backend::query`].
    fn query_keys(
        &mut self,
        statement: &Statement,
        args: &[Vec<&Value>],
        budget: usize,
    ) -> Result<Vec<Row>, Self::Error>;
    /// Runs a statement for its effect.
    fn execute(&mut self, statement: &Statement, args: &[&Value]) -> Result<(), Self::Error>;
    /// Inserts a guest's row into `table` (`statement` is its single-row INSERT). A backend may
    /// hold the row back and write the rows of many keys together later (see
    /// [`crate::populate::KeyRun::flush`]), once it has checked the values as the INSERT would.
    fn insert(&mut self, table: &Table, statement: &Statement, args: &[&Value]) -> Result<(), Self::Error> {
        let _ = table;
        self.execute(statement, args)
    }
    /// The name of the store a reference names (`None`: the default store).
    fn store_name(&mut self, store: Option<&str>) -> String;
    /// The size of object `key`, None when it is absent; refused when the role may not use the
    /// store.
    fn object_size(&mut self, store: Option<&str>, key: &str) -> Result<Option<u64>, Self::Error>;
    /// The bytes `range` of object `key` (within its size).
    fn object_range(
        &mut self,
        store: Option<&str>,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, Self::Error>;
    /// Stores `content` for `attribute` of `table` in the row whose primary key is `key`, as a
    /// value of that attribute's codec, and returns the reference (JSON text) to insert.
    fn object_put(
        &mut self,
        table: &Table,
        attribute: &str,
        key: &Row,
        filename: Option<&str>,
        content: Content,
    ) -> Result<String, Self::Error>;
    /// A new path for a spool file (the host creates it, and removes it when done).
    fn spool_path(&mut self) -> Result<std::path::PathBuf, Self::Error>;
    /// Bytes a call may write to spool files in all, if limited.
    fn spool_limit(&mut self) -> Option<u64>;
}

/// A guest query's checked statement, and the attributes of its rows that hold object references
/// (store attributes of the table it reads; none for an expression).
struct Fetch {
    /// Numbered in the order the run met them.
    id: usize,
    statement: Statement,
    /// The same query for many keys at once (None when it does not depend on the key).
    batched: Option<Statement>,
    references: Vec<String>,
    /// Calls since [`Session::batchable`] last counted.
    uses: std::sync::atomic::AtomicUsize,
}

/// A guest query as the cache knows it: relation, restrictions, attributes, order, limit, fetch1.
type FetchKey = (String, Vec<String>, Vec<String>, Vec<String>, Option<u64>, bool);

/// What every key of one populate run shares: the target, its parts, the scope, the module's
/// version, and the checked statements (built once per run, not once per key).
pub struct Session {
    pub scope: Scope,
    pub target: Arc<TableInfo>,
    pub parts: Vec<Arc<TableInfo>>,
    /// The sha256 of the module that runs (`_job_version`).
    pub version: String,
    tables: Mutex<HashMap<String, Arc<TableInfo>>>,
    fetches: Mutex<HashMap<FetchKey, Arc<Fetch>>>,
    /// Fetches whose batched read failed: read per key.
    unbatchable: Mutex<std::collections::HashSet<usize>>,
    /// Single-row INSERTs by table and columns (positions), built once per run.
    inserts: Mutex<HashMap<Table, Vec<(Vec<usize>, Arc<Statement>)>>>,
}

impl Session {
    pub fn new(scope: Scope, target: TableInfo, parts: Vec<TableInfo>, version: String) -> Session {
        Session {
            scope,
            target: Arc::new(target),
            parts: parts.into_iter().map(Arc::new).collect(),
            version,
            tables: Mutex::new(HashMap::new()),
            fetches: Mutex::new(HashMap::new()),
            unbatchable: Mutex::new(Default::default()),
            inserts: Mutex::new(HashMap::new()),
        }
    }

    /// The target's key attributes, with the key's values in the target's column order (NULL for
    /// one the key lacks): the arguments of the jobs statements.
    pub fn key_values<'k>(&self, key: &'k Row) -> Vec<&'k Value> {
        const NULL: &Value = &Value::Null;
        self.target
            .key()
            .iter()
            .map(|c| key.iter().find(|f| f.name == c.name).map_or(NULL, |f| &f.value))
            .collect()
    }

    /// The table a guest names.
    fn resolve<B: Backend>(&self, backend: &mut B, name: &str) -> Result<Table, B::Error> {
        let lookup = Lookup::of(&self.scope, name);
        backend.resolve(&lookup.name).or_else(|missing| lookup.part.ok_or(missing))
    }

    /// A table a guest names, described (the target and its parts as the run read them).
    fn table<B: Backend>(&self, backend: &mut B, name: &str) -> Result<Arc<TableInfo>, B::Error> {
        if let Some(t) = lock(&self.tables).get(name) {
            return Ok(t.clone());
        }
        let resolved = self.resolve(backend, name)?;
        let info = match std::iter::once(&self.target).chain(&self.parts).find(|t| t.table == resolved) {
            Some(t) => t.clone(),
            None => Arc::new(backend.describe(&resolved)?),
        };
        lock(&self.tables).insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// The statement of a guest's query: checked (readable tables, known attributes, conditions
    /// re-emitted from their syntax trees) once per run. Every key of a run has the same
    /// attributes, so the statement depends on the query only.
    fn fetch_statement<B: Backend>(
        &self,
        backend: &mut B,
        q: Query,
        one: bool,
        key: &Row,
    ) -> Result<Arc<Fetch>, B::Error> {
        statements::check_query_text(&q)?;
        let cache_key: FetchKey = (q.relation, q.restrictions, q.attributes, q.order_by, q.limit, one);
        if let Some(f) = lock(&self.fetches).get(&cache_key) {
            return Ok(f.clone());
        }
        let (relation, restrictions, attributes, order_by, limit, _) = &cache_key;
        let query = Query {
            relation: relation.clone(),
            restrictions: restrictions.clone(),
            attributes: attributes.clone(),
            order_by: order_by.clone(),
            limit: *limit,
        };
        let limit = if one { Some(2) } else { *limit };
        let ((statement, batched), references) = match statements::relation_expression(relation)? {
            Some(mut expression) => {
                let compiled =
                    algebra::compile(&mut expression, &mut GuestCatalog { session: self, backend })?;
                let statement = statements::fetch_expression(
                    expression.to_string(),
                    &compiled,
                    &self.target,
                    key,
                    &query,
                    limit,
                )?;
                // An expression's attributes may be computed: none is taken for a reference.
                (statement, vec![])
            }
            None => {
                let info = self.table(backend, relation)?;
                self.scope.check_read(&info.table)?;
                let references = info
                    .columns
                    .iter()
                    .filter(|c| c.store && (attributes.is_empty() || attributes.contains(&c.name)))
                    .map(|c| c.name.clone())
                    .collect();
                (statements::fetch_table(&info, key, &query, limit)?, references)
            }
        };
        let mut fetches = lock(&self.fetches);
        let fetch =
            Arc::new(Fetch { id: fetches.len(), statement, batched, references, uses: Default::default() });
        fetches.insert(cache_key, fetch.clone());
        Ok(fetch)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a cache that is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tables named in a guest's expression: resolved as the guest's table names are, and only
/// those the make may read.
struct GuestCatalog<'a, B> {
    session: &'a Session,
    backend: &'a mut B,
}

impl<B: Backend> Catalog for GuestCatalog<'_, B> {
    type Error = B::Error;

    fn table(&mut self, name: &str) -> Result<algebra::TableInfo, B::Error> {
        let t = self.session.resolve(self.backend, name)?;
        self.session.scope.check_read(&t)?;
        self.backend.heading(&t)
    }
}

/// The database as one key's make call sees it.
pub struct MakeHost<B> {
    pub session: Arc<Session>,
    pub backend: B,
    pub key: Row,
    pub started: Instant,
    /// The session's wall clock when the key started, µs since 1970 (`_job_start_time`).
    pub started_at: i64,
    /// The objects this call may read, and its uploads.
    pub objects: Objects,
    /// Rows read ahead for the batch of keys this call's key belongs to.
    pub prefetched: Prefetched,
}

impl<B: Backend> Database for MakeHost<B> {
    type Error = B::Error;

    fn log(&mut self, level: Level, message: String) {
        // A message is text for the log and the client: a NUL would end it early.
        let message = if message.contains('\0') { message.replace('\0', "\\0") } else { message };
        self.backend.log(level, &message);
    }

    fn fetch(&mut self, q: Query, one: bool, budget: usize) -> Result<Vec<Row>, B::Error> {
        let fetch = self.session.fetch_statement(&mut self.backend, q, one, &self.key)?;
        fetch.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let statement = &fetch.statement;
        let rows = match self.prefetched.take(&fetch).filter(|rows| batch::rows_bytes(rows) <= budget) {
            Some(rows) => rows,
            None => {
                let mut args = Vec::with_capacity(statement.params.len());
                for c in &statement.params {
                    // Parameters are the key's attributes, by construction.
                    let value = self.key.iter().find(|f| f.name == c.name).map(|f| &f.value);
                    args.push(value.unwrap_or(&Value::Null));
                }
                self.backend.query(statement, &args, budget)?
            }
        };
        if one {
            check_one(&rows, &statement.label, &self.key)?;
        }
        self.objects.note_rows(&rows, &fetch.references);
        Ok(rows)
    }

    fn insert(&mut self, table: String, rows: Vec<Row>) -> Result<u64, B::Error> {
        let info = self.session.table(&mut self.backend, &table)?;
        self.session.scope.check_write(&info.table)?;
        let is_target = info.table == self.session.target.table;
        let mut count = 0;
        for row in rows {
            let job = is_target.then(|| JobMetadata {
                started_at: self.started_at,
                duration: self.started.elapsed().as_secs_f64(),
                version: self.session.version.clone(),
            });
            let (columns, values) = statements::insert_values(&info, row, &self.key, job.as_ref())?;
            let statement = {
                let mut inserts = lock(&self.session.inserts);
                let known = inserts.get(&info.table).and_then(|v| v.iter().find(|(c, _)| *c == columns));
                match known {
                    Some((_, s)) => s.clone(),
                    None => {
                        let s = Arc::new(statements::insert_statement(&info, &columns));
                        inserts.entry(info.table.clone()).or_default().push((columns, s.clone()));
                        s
                    }
                }
            };
            let args: Vec<&Value> = values.iter().collect();
            self.backend.insert(&info.table, &statement, &args)?;
            count += 1;
        }
        Ok(count)
    }

    fn object_info(
        &mut self,
        reference: String,
        member: Option<String>,
        budget: usize,
    ) -> Result<ObjectInfo, B::Error> {
        self.info(&reference, member.as_deref(), budget)
    }

    fn object_read(
        &mut self,
        reference: String,
        member: Option<String>,
        offset: u64,
        length: u32,
        budget: usize,
    ) -> Result<Vec<u8>, B::Error> {
        self.read(&reference, member.as_deref(), offset, length, budget)
    }

    fn upload_new(
        &mut self,
        table: String,
        attribute: String,
        key: Row,
        filename: Option<String>,
    ) -> Result<u32, B::Error> {
        MakeHost::upload_new(self, &table, attribute, key, filename)
    }

    fn upload_write(&mut self, upload: u32, chunk: Vec<u8>) -> Result<(), B::Error> {
        MakeHost::upload_write(self, upload, chunk)
    }

    fn upload_finish(&mut self, upload: u32) -> Result<String, B::Error> {
        MakeHost::upload_finish(self, upload)
    }

    fn upload_drop(&mut self, upload: u32) {
        MakeHost::upload_drop(self, upload)
    }
}
