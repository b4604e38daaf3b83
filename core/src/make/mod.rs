//! Make functions: WebAssembly components of the world `datajoint:make/make` (wasm-make/wit).
//!
//! The host side of the contract, free of PostgreSQL: components are compiled and checked against
//! the world once ([`load`]), prepared once per process ([`Prepared`], an `InstancePre`), and each
//! key costs one instantiation in a fresh store ([`Prepared::call`]). The database itself is behind
//! the [`Database`] trait, which the extension implements over SPI.
//!
//! The guest gets WASI preview 2 with nothing granted: no preopened directories, no environment, no
//! arguments, no network, empty stdin; stdout and stderr go to bounded memory pipes whose text is
//! returned with the call (a Rust panic message lands there). Clocks and random numbers work.

use std::sync::OnceLock;

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::isolate;
use crate::sandbox::{self, ActiveCall, Cancel, Guard, Guarded, Limits, SandboxError};
use crate::threads;

mod output;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wasm-make/wit",
        world: "make",
        imports: { default: trappable },
        additional_derives: [PartialEq],
    });
}

pub use bindings::datajoint::make::host::{Level, Query};
pub use bindings::datajoint::make::objects::ObjectInfo;
use bindings::datajoint::make::objects::Upload;
pub use bindings::datajoint::make::types::{Field, Value};

/// The linker make components are instantiated with.
pub type MakeLinker<D> = Linker<State<D>>;

/// A row, in heading order.
pub type Row = Vec<Field>;

/// The version of the contract this host implements (guests built for any 0.1.x link).
pub const WORLD: &str = "datajoint:make/make@0.1.1";

/// Bytes of stdout and of stderr kept per call; the rest is dropped.
pub const OUTPUT_CAPACITY: usize = 64 * 1024;

/// The database as a make function sees it: what the host interface's calls do.
pub trait Database: Send + 'static {
    type Error: Send + 'static;
    fn log(&mut self, level: Level, message: String);
    /// Rows of `query` restricted by the current key; `one` asks for exactly one row. The rows may
    /// take at most `budget` bytes of host memory (what the guest's memory limit has left: the
    /// rows are copied into the guest next); a query whose rows need more must fail without
    /// materializing them.
    fn fetch(&mut self, query: Query, one: bool, budget: usize) -> Result<Vec<Row>, Self::Error>;
    /// Inserts into the target or one of its parts; returns the number of rows inserted.
    fn insert(&mut self, table: String, rows: Vec<Row>) -> Result<u64, Self::Error>;
    /// What an object reference (or a folder object's `member`) names; a folder's manifest may
    /// take at most `budget` bytes of host memory.
    fn object_info(
        &mut self,
        reference: String,
        member: Option<String>,
        budget: usize,
    ) -> Result<ObjectInfo, Self::Error>;
    /// Up to `length` bytes of an object from `offset`, taking at most `budget` bytes.
    fn object_read(
        &mut self,
        reference: String,
        member: Option<String>,
        offset: u64,
        length: u32,
        budget: usize,
    ) -> Result<Vec<u8>, Self::Error>;
    /// Starts an object for `attribute` of `table`; returns the upload's number.
    fn upload_new(
        &mut self,
        table: String,
        attribute: String,
        key: Row,
        filename: Option<String>,
    ) -> Result<u32, Self::Error>;
    fn upload_write(&mut self, upload: u32, chunk: Vec<u8>) -> Result<(), Self::Error>;
    /// Stores the upload's object; returns its reference (JSON text).
    fn upload_finish(&mut self, upload: u32) -> Result<String, Self::Error>;
    /// Forgets an upload (finished or not).
    fn upload_drop(&mut self, upload: u32);
}

/// Why a make call failed.
#[derive(Debug)]
pub enum MakeError<E> {
    /// The guest returned `err(message)`.
    Guest(String),
    /// A host call failed: the database's own error.
    Host(E),
    /// The guest trapped, ran out of time, fuel or memory, or could not be instantiated.
    Sandbox(SandboxError),
}

/// What the guest wrote to stdout and stderr during the call (each at most [`OUTPUT_CAPACITY`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The panic message of a Rust guest ("panicked at src/lib.rs:3:5:\nboom" → "boom"), if any.
    pub fn panic_message(&self) -> Option<String> {
        let (_, rest) = self.stderr.split_once("panicked at ")?;
        let (_location, message) = rest.split_once('\n')?;
        let message = message.lines().next().unwrap_or_default().trim();
        (!message.is_empty()).then(|| message.to_string())
    }
}

/// Per-call store data.
pub struct State<D: Database> {
    guard: Guard,
    wasi: WasiCtx,
    table: ResourceTable,
    db: D,
    host_error: Option<D::Error>,
}

impl<D: Database> Guarded for State<D> {
    fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

impl<D: Database> WasiView for State<D> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl<D: Database> State<D> {
    /// Records the database's error and stops the guest: it never sees host errors as values.
    fn fail(&mut self, error: D::Error) -> wasmtime::Error {
        self.host_error = Some(error);
        wasmtime::format_err!("host call failed")
    }
}

impl<D: Database> bindings::datajoint::make::types::Host for State<D> {}

impl<D: Database> bindings::datajoint::make::host::Host for State<D> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.db.log(level, message);
        Ok(())
    }

    fn fetch(&mut self, q: Query) -> wasmtime::Result<Vec<Row>> {
        let budget = self.guard.memory_left();
        self.db.fetch(q, false, budget).map_err(|e| self.fail(e))
    }

    fn fetch1(&mut self, q: Query) -> wasmtime::Result<Row> {
        let budget = self.guard.memory_left();
        match self.db.fetch(q, true, budget) {
            Ok(mut rows) if rows.len() == 1 => Ok(rows.pop().expect("one row")),
            Ok(rows) => Err(wasmtime::format_err!("fetch1 got {} rows from the database", rows.len())),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn insert(&mut self, table: String, rows: Vec<Row>) -> wasmtime::Result<u64> {
        self.db.insert(table, rows).map_err(|e| self.fail(e))
    }
}

impl<D: Database> bindings::datajoint::make::objects::Host for State<D> {
    fn info(&mut self, reference: String, member: Option<String>) -> wasmtime::Result<ObjectInfo> {
        let budget = self.guard.memory_left();
        self.db.object_info(reference, member, budget).map_err(|e| self.fail(e))
    }

    fn read(
        &mut self,
        reference: String,
        member: Option<String>,
        offset: u64,
        length: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        let budget = self.guard.memory_left();
        self.db.object_read(reference, member, offset, length, budget).map_err(|e| self.fail(e))
    }
}

impl<D: Database> bindings::datajoint::make::objects::HostUpload for State<D> {
    fn new(
        &mut self,
        table: String,
        attribute: String,
        key: Row,
        filename: Option<String>,
    ) -> wasmtime::Result<Resource<Upload>> {
        match self.db.upload_new(table, attribute, key, filename) {
            Ok(n) => Ok(Resource::new_own(n)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn write(&mut self, upload: Resource<Upload>, chunk: Vec<u8>) -> wasmtime::Result<()> {
        self.db.upload_write(upload.rep(), chunk).map_err(|e| self.fail(e))
    }

    fn finish(&mut self, upload: Resource<Upload>) -> wasmtime::Result<String> {
        self.db.upload_finish(upload.rep()).map_err(|e| self.fail(e))
    }

    fn drop(&mut self, upload: Resource<Upload>) -> wasmtime::Result<()> {
        self.db.upload_drop(upload.rep());
        Ok(())
    }
}

/// The linker every make component is checked and instantiated against: WASI p2 and the host
/// interface, nothing else.
pub fn linker<D: Database>() -> Result<Linker<State<D>>, SandboxError> {
    let mut linker = Linker::new(sandbox::engine());
    let internal = |e: wasmtime::Error| SandboxError::Internal(format!("{e:#}"));
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(internal)?;
    bindings::Make::add_to_linker::<_, HasSelf<State<D>>>(&mut linker, |s| s).map_err(internal)?;
    Ok(linker)
}

/// Refuses core modules and other binaries with a clear reason before anything compiles them.
fn check_header(bytes: &[u8]) -> Result<(), SandboxError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(SandboxError::InvalidModule {
            message: "this is a core WebAssembly module, not a component".into(),
            detail: Some(format!(
                "make functions are components of the world {WORLD}: build Rust for the wasm32-wasip2 target, Python with componentize-py"
            )),
        }),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        // The text format, for tests and hand-written components.
        _ if bytes.first() == Some(&b'(') && std::str::from_utf8(bytes).is_ok() => Ok(()),
        _ => Err(SandboxError::InvalidModule {
            message: "the bytes have no \\0asm component header and are not component text".into(),
            detail: None,
        }),
    }
}

/// Compiles component bytes in this process (tests, examples and trusted input).
pub fn compile(bytes: &[u8]) -> Result<Component, SandboxError> {
    check_header(bytes)?;
    Component::new(sandbox::engine(), bytes).map_err(sandbox::compile_error)
}

/// Compiles component bytes in a child process (see [`isolate`]) whose address space may grow by
/// `memory_limit` bytes, polling `stop` while it waits; returns the machine code for
/// [`deserialize`] (safe to load: this process's engine produced it).
pub fn precompile(
    bytes: &[u8],
    memory_limit: usize,
    stop: impl FnMut() -> bool,
) -> Result<Vec<u8>, SandboxError> {
    check_header(bytes)?;
    isolate::precompile(bytes, isolate::Kind::Component, memory_limit, stop)
}

/// The engine fingerprint compiled artifacts are keyed by: wasmtime's own compatibility hash of
/// the engine configuration, plus its version.
pub fn engine_fingerprint() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sandbox::engine().precompile_compatibility_hash().hash(&mut h);
    format!("wasmtime-{}-{:016x}", crate::WASMTIME_VERSION, h.finish())
}

/// Machine code of a compiled component, to store.
pub fn serialize(component: &Component) -> Result<Vec<u8>, SandboxError> {
    component.serialize().map_err(|e| SandboxError::Internal(format!("{e:#}")))
}

/// A component from [`serialize`]d machine code.
///
/// # Safety
/// `artifact` must come from [`serialize`] under the same [`engine_fingerprint`] and from storage
/// only the extension writes: wasmtime runs this code as it is.
pub unsafe fn deserialize(artifact: &[u8]) -> Result<Component, SandboxError> {
    // Loading checks the instance pool's limits (memories, tables, sizes): refusals read as when
    // compiling.
    unsafe { Component::deserialize(sandbox::engine(), artifact) }.map_err(sandbox::compile_error)
}

/// A component checked against the world and ready to instantiate in microseconds.
pub struct Prepared<D: Database> {
    pre: bindings::MakePre<State<D>>,
}

impl<D: Database> Prepared<D> {
    /// Checks that `linker` satisfies every import of `component` and that it exports `make`
    /// with the contract's signature.
    pub fn new(linker: &Linker<State<D>>, component: &Component) -> Result<Prepared<D>, SandboxError> {
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| SandboxError::UnsupportedImport(first_line(&format!("{e:#}")).to_string()))?;
        let pre = bindings::MakePre::new(pre).map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("no export") {
                let available = component
                    .component_type()
                    .exports(sandbox::engine())
                    .map(|(n, _)| n.to_string())
                    .collect();
                SandboxError::MissingExport { name: "make".into(), available }
            } else {
                SandboxError::WrongSignature { name: "make".into(), found: text.replace('\n', ": ") }
            }
        })?;
        Ok(Prepared { pre })
    }

    /// Instantiates the component in a fresh store under `limits` and calls `make(key)`.
    /// Returns the database handle back with the outcome and the guest's output.
    pub fn call(
        &self,
        db: D,
        key: &Row,
        limits: &Limits,
        cancel: &Cancel,
    ) -> (Result<(), MakeError<D::Error>>, Output, D) {
        let mut instance = self.instance(db, limits, cancel);
        let (outcome, output) = instance.call(self, key, limits);
        (outcome, output, instance.into_db())
    }

    /// A store for `db` under `limits`, not instantiated yet: its first [`Instance::call`]
    /// instantiates the component.
    pub fn instance(&self, db: D, limits: &Limits, cancel: &Cancel) -> Instance<D> {
        let (stdout, stderr) = (output::Pipe::default(), output::Pipe::default());
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
        let state = State {
            guard: Guard::new(limits, cancel.clone()),
            wasi,
            table: ResourceTable::new(),
            db,
            host_error: None,
        };
        // Setting fuel on a fuel-enabled engine, the only thing that could fail here, cannot fail.
        let store = sandbox::guarded_store(state).unwrap_or_else(|e| panic!("cannot create a store: {e}"));
        Instance { store, make: None, stdout, stderr, failed: false, calls: 0 }
    }
}

/// A component instance that may serve several keys of one run, as a datajoint-python process
/// serves them: what the guest keeps in its memory (a loaded model, a cache) is there for the
/// next key. Each call gets its own limits (deadline and fuel from the call's start; the memory
/// the instance holds counts against the memory limit), its own output, and the database handle as
/// the host set it for the key ([`Instance::db_mut`]). After any failed call the instance is
/// spent: its state may be half-updated, so the host starts a fresh one.
pub struct Instance<D: Database> {
    store: wasmtime::Store<State<D>>,
    make: Option<bindings::Make>,
    stdout: output::Pipe,
    stderr: output::Pipe,
    failed: bool,
    calls: u64,
}

impl<D: Database> Instance<D> {
    /// The database handle the next call uses.
    pub fn db_mut(&mut self) -> &mut D {
        &mut self.store.data_mut().db
    }

    pub fn into_db(self) -> D {
        self.store.into_data().db
    }

    /// Whether another key may be made with this instance (no call failed).
    pub fn usable(&self) -> bool {
        !self.failed
    }

    /// Calls made so far (the first instantiated the component).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Calls `make(key)` under `limits`, instantiating `prepared` first if this is the first
    /// call. A spent instance refuses (see [`Instance::usable`]).
    pub fn call(
        &mut self,
        prepared: &Prepared<D>,
        key: &Row,
        limits: &Limits,
    ) -> (Result<(), MakeError<D::Error>>, Output) {
        if self.failed {
            let e = SandboxError::Internal("a make instance whose call failed was called again".into());
            return (Err(MakeError::Sandbox(e)), Output::default());
        }
        self.calls += 1;
        if self.calls > 1 {
            // Setting fuel on a fuel-enabled engine cannot fail.
            sandbox::renew(&mut self.store, limits).unwrap_or_else(|e| panic!("cannot renew a store: {e}"));
        }
        let store = &mut self.store;
        let outcome = match ActiveCall::begin() {
            Err(e) => Err(MakeError::Sandbox(e)),
            Ok(_active) => {
                // WASI's blocking calls run on our runtime: its worker never takes a signal.
                let _tokio = runtime().enter();
                let make = match self.make.take() {
                    Some(make) => Ok(make),
                    None => prepared.pre.instantiate(&mut *store),
                };
                let result = make.and_then(|m| {
                    let r = m.call_make(&mut *store, key);
                    self.make = Some(m);
                    r
                });
                match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(message)) => Err(MakeError::Guest(message)),
                    Err(e) => match store.data_mut().host_error.take() {
                        Some(host) => Err(MakeError::Host(host)),
                        None => Err(MakeError::Sandbox(sandbox::classify(e, store.data_mut().guard()))),
                    },
                }
            }
        };
        self.failed = outcome.is_err();
        let output = Output { stdout: self.stdout.take(), stderr: self.stderr.take() };
        (outcome, output)
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

static RUNTIME_THREADS: OnceLock<usize> = OnceLock::new();

/// Sets the threads of the runtime WASI's host calls block on (default 1: a backend runs one
/// guest at a time; a multi-threaded worker wants one per concurrent call). Only before the
/// first call; returns the number in force.
pub fn configure_runtime(threads: usize) -> usize {
    *RUNTIME_THREADS.get_or_init(|| threads.max(1))
}

/// The tokio runtime WASI's host calls block on, its worker threads started with every signal
/// blocked (Postgres' handlers must only ever run on the backend's main thread).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let threads = configure_runtime(1);
        threads::with_signals_blocked(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .max_blocking_threads(threads)
                .thread_name("dj-wasi")
                .enable_time()
                .build()
                .expect("a one-thread tokio runtime")
        })
    })
}

/// `name=value, ...` for messages.
pub fn display_row(row: &[Field]) -> String {
    row.iter().map(|f| format!("{}={}", f.name, display_value(&f.value))).collect::<Vec<_>>().join(", ")
}

/// The variant's name, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Decimal(_) => "decimal",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Json(_) => "json",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::Timestamp(_) => "timestamp",
        Value::Uuid(_) => "uuid",
    }
}

pub fn display_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Decimal(s) => s.clone(),
        Value::Text(s) | Value::Json(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::Date(d) => format!("date {d}"),
        Value::Time(t) => format!("time {t}"),
        Value::Timestamp(t) => format!("timestamp {t}"),
        Value::Uuid((hi, lo)) => format!("{hi:016x}{lo:016x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_and_garbage_are_refused_with_reasons() {
        let core = b"\0asm\x01\0\0\0";
        match compile(core) {
            Err(SandboxError::InvalidModule { message, .. }) => {
                assert!(message.contains("core WebAssembly module"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(compile(b"hello"), Err(SandboxError::InvalidModule { .. })));
    }

    #[test]
    fn panic_message_is_taken_from_stderr() {
        let out = Output {
            stdout: String::new(),
            stderr: "\nthread '<unnamed>' panicked at src/lib.rs:40:13:\nboom 3\nnote: run with `RUST_BACKTRACE=1`\n"
                .into(),
        };
        assert_eq!(out.panic_message().as_deref(), Some("boom 3"));
        assert_eq!(Output::default().panic_message(), None);
    }

    #[test]
    fn fingerprint_names_the_engine_version() {
        assert!(engine_fingerprint().starts_with("wasmtime-48.0.8-"));
        assert_eq!(engine_fingerprint(), engine_fingerprint());
    }
}
