//! The WebAssembly sandbox every guest runs in.
//!
//! One [`Engine`] per process, configured so that no guest failure can take the hosting
//! PostgreSQL backend down: no signal handlers (explicit bounds checks instead), no large virtual
//! memory reservations, a bounded wasm stack (guests share the backend's C stack), fuel for a
//! deterministic instruction budget, and epoch interruption for wall-clock limits and prompt
//! cancellation. Every store gets a memory cap through [`ResourceLimiter`].

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, ExternType, Instance, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap, UpdateDeadline, Val, ValType, WasmBacktrace,
};

use crate::threads;

/// How often the epoch advances while a guest runs: the resolution of timeouts and cancellation.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Guests share the backend's C stack (8 MB by default); keep well inside it.
pub const MAX_WASM_STACK: usize = 512 * 1024;

const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Core instances, memories and tables one component may create.
const MAX_INSTANCES: usize = 32;
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 64;
const MAX_BACKTRACE_FRAMES: usize = 32;

/// How the process's engine is sized; fixed when the engine is first used (see [`configure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// The largest linear memory a guest may grow (bytes, a multiple of 64 KiB). Every memory
    /// slot of the instance pool reserves this much address space (`PROT_NONE`, nothing
    /// committed): the reservation follows the configured memory limit instead of 4 GiB a slot.
    /// Part of the engine's identity: compiled code is only valid for the same value.
    pub max_memory: usize,
    /// Guest instances alive at once in this process: a make whose insert fires a trigger that
    /// populates another table nests one more.
    pub max_instances: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { max_memory: 1 << 30, max_instances: 8 }
    }
}

impl EngineSettings {
    /// Linear memories of the pool: two per instance (a Rust component has one, a Python one a few).
    pub fn total_memories(&self) -> u32 {
        2 * self.max_instances
    }

    /// Core instances of the pool: most components instantiate a handful; a Python one more.
    pub fn total_core_instances(&self) -> u32 {
        (self.max_instances * 8).max(MAX_INSTANCES as u32)
    }

    /// Address space the instance pool reserves for linear memories.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.total_memories()) * self.max_memory as u64
    }
}

static SETTINGS: OnceLock<EngineSettings> = OnceLock::new();

/// Sizes the engine before its first use; later calls change nothing. Returns the settings in
/// force (a host compares them with what it asked for: a limit raised after the engine was made
/// cannot take effect in this process).
pub fn configure(settings: EngineSettings) -> EngineSettings {
    let page = 1usize << 16;
    let settings = EngineSettings {
        max_memory: settings.max_memory.div_ceil(page).max(1) * page,
        max_instances: settings.max_instances.max(1),
    };
    *SETTINGS.get_or_init(|| settings)
}

/// The settings the engine is (or will be) created with.
pub fn settings() -> EngineSettings {
    *SETTINGS.get_or_init(EngineSettings::default)
}

/// What one guest call may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit of the call; `None` for no limit (cancellation still works).
    pub timeout: Option<Duration>,
    /// Fuel (roughly one unit per wasm instruction); `None` for no budget.
    pub fuel: Option<u64>,
    /// Upper bound on the bytes of all linear memories of the call together.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout: Some(Duration::from_secs(3600)), fuel: None, memory_bytes: 1 << 30 }
    }
}

/// Why a guest call did not return a value. Each variant maps to one SQLSTATE in the extension.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SandboxError {
    #[error("not a valid WebAssembly module: {message}")]
    InvalidModule { message: String, detail: Option<String> },
    #[error("module imports \"{0}\", but the sandbox provides no imports")]
    UnsupportedImport(String),
    #[error("module has no exported function \"{name}\"")]
    MissingExport { name: String, available: Vec<String> },
    #[error("exported function \"{name}\" has type {found}")]
    WrongSignature { name: String, found: String },
    #[error("guest trapped: {message}")]
    Trap { message: String, backtrace: Option<String> },
    #[error("guest ran past its time limit of {} ms", limit.as_millis())]
    Timeout { limit: Duration },
    #[error("guest used up its fuel budget of {limit} units")]
    OutOfFuel { limit: u64 },
    #[error("guest tried to use {requested} bytes of memory, above the limit of {limit} bytes")]
    MemoryLimit { requested: usize, limit: usize },
    #[error("the sandbox cannot run this module: {0}")]
    Resource(String),
    #[error("guest call interrupted by the host")]
    Interrupted,
    #[error("compiling the module needed more than {limit} bytes of memory")]
    CompileMemory { limit: usize },
    #[error("sandbox failure: {0}")]
    Internal(String),
}

/// The engine configuration. Part of the identity of compiled artifacts: code compiled under
/// another configuration is rejected by wasmtime.
pub fn config(settings: &EngineSettings) -> Config {
    let mut c = Config::new();
    // No signal handlers: every bounds check is explicit code, so no guard pages are needed and an
    // out-of-bounds access is a trap, never a SIGSEGV in the backend.
    c.signals_based_traps(false);
    c.memory_guard_size(0);
    // Each memory lives in a pool slot reserved up front (PROT_NONE, no memory committed), so
    // memories grow in place. With no reservation every memory.grow reallocates and copies:
    // growing to 256 MiB a page at a time took 302 s that way.
    c.memory_reservation(settings.max_memory as u64);
    c.consume_fuel(true);
    c.epoch_interruption(true);
    c.max_wasm_stack(MAX_WASM_STACK);
    c.wasm_backtrace_max_frames(NonZeroUsize::new(MAX_BACKTRACE_FRAMES));
    // Instances come from a pool of slots reserved once per process: a make call reuses the
    // previous key's memory mapping (its pages released with madvise) instead of mapping and
    // unmapping a slot of address space, which was 40 % of a trivial make's time. (Keeping pages
    // resident and zeroing them instead was slower: most of a guest's initial memory is never
    // touched.)
    // The pool holds what `max_instances` nested guests need; its address space is reserved
    // (PROT_NONE), not committed, and sized by the memory limit (about 16 GiB at the default
    // 1 GB limit; it was 269 GB with 4 GiB slots).
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(settings.max_instances)
        .total_core_instances(settings.total_core_instances())
        .total_memories(settings.total_memories())
        .total_tables(MAX_TABLES as u32)
        .total_stacks(0)
        .max_core_instances_per_component(MAX_INSTANCES as u32)
        .max_memories_per_component(MAX_MEMORIES as u32)
        .max_tables_per_component(MAX_TABLES as u32)
        .max_memories_per_module(MAX_MEMORIES as u32)
        .max_tables_per_module(MAX_TABLES as u32)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(settings.max_memory)
        .max_core_instance_size(16 << 20)
        .max_component_instance_size(16 << 20)
        // Reuse the least recently used slot rather than warm new ones: resident memory stays at
        // what one call needs, however many different modules a backend runs.
        .max_unused_warm_slots(0)
        .linear_memory_keep_resident(0)
        .table_keep_resident(0);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c
}

/// The process-wide engine, created on first use (never in the postmaster: threads and JIT code
/// would not survive the fork).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(&config(&settings())).expect("the sandbox engine configuration is valid"))
}

/// Compiles (and validates) a core module: binary (starting with the `\0asm` header) or text.
pub fn compile(bytes: &[u8]) -> Result<Module, SandboxError> {
    if !bytes.starts_with(b"\0asm") && std::str::from_utf8(bytes).is_err() {
        return Err(SandboxError::InvalidModule {
            message: "the bytes are neither WebAssembly binary (no \\0asm header) nor WebAssembly text"
                .into(),
            detail: None,
        });
    }
    Module::new(engine(), bytes).map_err(compile_error)
}

/// Compiles a core module like [`compile`], in a child process (see [`crate::isolate`]).
pub fn compile_isolated(
    bytes: &[u8],
    memory_limit: usize,
    stop: impl FnMut() -> bool,
) -> Result<Module, SandboxError> {
    if !bytes.starts_with(b"\0asm") && std::str::from_utf8(bytes).is_err() {
        return compile(bytes);
    }
    let code = crate::isolate::precompile(bytes, crate::isolate::Kind::Module, memory_limit, stop)?;
    // SAFETY: machine code this process's engine just produced in its own child.
    unsafe { Module::deserialize(engine(), &code) }.map_err(compile_error)
}

/// Why wasmtime would not compile a module or component.
pub(crate) fn compile_error(e: wasmtime::Error) -> SandboxError {
    let text = format!("{e:#}");
    // Valid WebAssembly beyond the instance pool's per-instance limits (memories, tables, size):
    // a resource this sandbox will not give, not an invalid module.
    if let Some((_, reason)) = text.split_once("does not fit in pooling allocator requirements: ") {
        let reason = reason.lines().next().unwrap_or(reason);
        return SandboxError::Resource(format!("resource limit exceeded: {reason}"));
    }
    // Text-format errors come as "reason\n --> line:col\n | excerpt": reason first, location after.
    let mut lines = text.lines();
    let message = lines.next().unwrap_or_default().trim().to_string();
    let rest: Vec<&str> = lines.map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    SandboxError::InvalidModule { message, detail: (!rest.is_empty()).then(|| rest.join("\n")) }
}

/// Instantiates `module` in a fresh store under `limits` and calls its export `name`, which must
/// take no arguments and return nothing, an i32 or an i64 (returned widened; nothing gives 0).
///
/// `cancel` is polled every [`EPOCH_TICK`] on the calling thread; when it is requested the guest
/// stops with [`SandboxError::Interrupted`] (the host then raises its own cancel error).
pub fn call_export(
    module: &Module,
    name: &str,
    limits: &Limits,
    cancel: Cancel,
) -> Result<i64, SandboxError> {
    if let Some(import) = module.imports().next() {
        return Err(SandboxError::UnsupportedImport(format!("{}.{}", import.module(), import.name())));
    }
    let ty = match module.get_export(name) {
        Some(ExternType::Func(ty)) => ty,
        _ => {
            let available = module
                .exports()
                .filter(|e| matches!(e.ty(), ExternType::Func(_)))
                .map(|e| e.name().to_string())
                .collect();
            return Err(SandboxError::MissingExport { name: name.to_string(), available });
        }
    };
    let results: Vec<ValType> = ty.results().collect();
    let returns_int = match results.as_slice() {
        [] => false,
        [ValType::I32] | [ValType::I64] => true,
        _ => return Err(SandboxError::WrongSignature { name: name.to_string(), found: ty.to_string() }),
    };
    if ty.params().len() != 0 {
        return Err(SandboxError::WrongSignature { name: name.to_string(), found: ty.to_string() });
    }

    let mut store = new_store(limits, cancel)?;
    let _active = ActiveCall::begin()?;
    let mut out = if returns_int { vec![results[0].default_value().unwrap()] } else { vec![] };
    let outcome = Instance::new(&mut store, module, &[]).and_then(|instance| {
        let func = instance.get_func(&mut store, name).expect("export checked above");
        func.call(&mut store, &[], &mut out)
    });
    match outcome {
        Ok(()) => Ok(match out.first() {
            Some(Val::I32(v)) => i64::from(*v),
            Some(Val::I64(v)) => *v,
            _ => 0,
        }),
        Err(e) => Err(classify(e, store.data_mut().guard())),
    }
}

/// When a running guest must stop from outside (its own limits apart): polled every
/// [`EPOCH_TICK`] on the thread running it. `Send + Sync`, so a multi-threaded host can cancel a
/// call from another thread with a [`Cancel::token`].
#[derive(Clone, Debug)]
pub enum Cancel {
    /// Nothing outside stops the call.
    Never,
    /// A check of the host's own state (the extension: Postgres' pending interrupts; it runs on
    /// the thread that runs the guest).
    Check(fn() -> bool),
    /// A flag any thread may set.
    Token(Arc<AtomicBool>),
}

impl Cancel {
    /// A token not yet cancelled.
    pub fn token() -> Cancel {
        Cancel::Token(Arc::new(AtomicBool::new(false)))
    }

    /// Stops every call this token (or a clone of it) guards.
    pub fn cancel(&self) {
        if let Cancel::Token(flag) = self {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn requested(&self) -> bool {
        match self {
            Cancel::Never => false,
            Cancel::Check(check) => check(),
            Cancel::Token(flag) => flag.load(Ordering::Relaxed),
        }
    }
}

/// Per-store state: the limits and why the host stopped the guest, if it did.
pub struct Guard {
    limits: Limits,
    deadline: Option<Instant>,
    cancel: Cancel,
    stopped: Option<Stop>,
    memory_requested: Option<usize>,
    /// Bytes of all memories and elements of all tables so far: a module with many memories or
    /// tables gets one budget, not one per memory.
    memory_total: usize,
    table_elements: usize,
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Timeout,
    Interrupted,
}

impl ResourceLimiter for Guard {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_total - current + desired;
        if total > self.limits.memory_bytes {
            // An error (not a refused grow) ends the call at once, so the guest cannot carry on
            // in a degraded state, and the message names the real cause.
            self.memory_requested = Some(total);
            wasmtime::bail!("memory limit exceeded");
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.table_elements - current + desired;
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

impl Guard {
    /// Bytes of memory the guest may still grow by: what the host may copy for it.
    pub fn memory_left(&self) -> usize {
        self.limits.memory_bytes.saturating_sub(self.memory_total)
    }

    /// The limits of one call, its deadline counted from now.
    pub fn new(limits: &Limits, cancel: Cancel) -> Guard {
        Guard {
            limits: *limits,
            deadline: limits.timeout.map(|t| Instant::now() + t),
            cancel,
            stopped: None,
            memory_requested: None,
            memory_total: 0,
            table_elements: 0,
        }
    }
}

/// Store data that carries a [`Guard`].
pub trait Guarded: 'static {
    fn guard(&mut self) -> &mut Guard;
}

impl Guarded for Guard {
    fn guard(&mut self) -> &mut Guard {
        self
    }
}

/// A store with the memory cap, fuel budget and epoch deadline of `limits` in force.
pub fn new_store(limits: &Limits, cancel: Cancel) -> Result<Store<Guard>, SandboxError> {
    guarded_store(Guard::new(limits, cancel))
}

/// A store for `data`, its guard's limits in force.
pub fn guarded_store<T: Guarded>(mut data: T) -> Result<Store<T>, SandboxError> {
    let fuel = data.guard().limits.fuel.unwrap_or(u64::MAX);
    let mut store = Store::new(engine(), data);
    store.limiter(|d| d.guard() as &mut dyn ResourceLimiter);
    store.set_fuel(fuel).map_err(|e| SandboxError::Internal(format!("{e:#}")))?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let g = ctx.data_mut().guard();
        if g.cancel.requested() {
            g.stopped = Some(Stop::Interrupted);
            return Ok(UpdateDeadline::Interrupt);
        }
        if g.deadline.is_some_and(|d| Instant::now() >= d) {
            g.stopped = Some(Stop::Timeout);
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(1))
    });
    Ok(store)
}

/// Renews `store`'s limits for another call of the instance it holds: a deadline counted from
/// now, the fuel budget whole again, nothing recorded from the last call. The memory its instance
/// holds stays counted.
pub fn renew<T: Guarded>(store: &mut Store<T>, limits: &Limits) -> Result<(), SandboxError> {
    let g = store.data_mut().guard();
    g.limits = *limits;
    g.deadline = limits.timeout.map(|t| Instant::now() + t);
    g.stopped = None;
    g.memory_requested = None;
    store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).map_err(|e| SandboxError::Internal(format!("{e:#}")))?;
    store.set_epoch_deadline(1);
    Ok(())
}

/// Turns a failed call into the reason the user should see. The host's own records (deadline,
/// cancel, memory cap) take precedence over the trap code they caused.
pub(crate) fn classify(err: wasmtime::Error, guard: &Guard) -> SandboxError {
    match guard.stopped {
        Some(Stop::Interrupted) => return SandboxError::Interrupted,
        Some(Stop::Timeout) => {
            return SandboxError::Timeout { limit: guard.limits.timeout.unwrap_or_default() };
        }
        None => {}
    }
    if let Some(requested) = guard.memory_requested {
        return SandboxError::MemoryLimit { requested, limit: guard.limits.memory_bytes };
    }
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(format_backtrace);
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => SandboxError::OutOfFuel { limit: guard.limits.fuel.unwrap_or(u64::MAX) },
        // Trap's Display is "wasm trap: <reason>"; the error type already says it is a trap.
        Some(trap) => {
            let text = trap.to_string();
            let message = text.strip_prefix("wasm trap: ").unwrap_or(&text).to_string();
            SandboxError::Trap { message, backtrace }
        }
        // Not a trap: the host refused something at instantiation (too many memories, tables or
        // instances) or could not provide it (address space).
        None => {
            let text = format!("{err:#}");
            if text.contains("maximum concurrent") {
                SandboxError::Resource(format!(
                    "more make calls are nested in this process than its instance pool holds ({}): {text}",
                    settings().max_instances
                ))
            } else {
                SandboxError::Resource(text)
            }
        }
    }
}

/// Innermost frame first, "0x1c <unknown>!compute", runs of one frame collapsed ("... (x31)") so
/// that a runaway recursion reads as one line.
fn format_backtrace(bt: &WasmBacktrace) -> String {
    let text = bt.to_string();
    let frames = text.lines().skip(1).filter_map(|line| {
        // "  0:     0x1c - <unknown>!compute": drop the index, fold the spacing.
        let (_, frame) = line.split_once(':')?;
        let frame = frame.split_whitespace().filter(|w| *w != "-").collect::<Vec<_>>().join(" ");
        (!frame.is_empty()).then_some(frame)
    });
    let mut runs: Vec<(String, usize)> = Vec::new();
    for frame in frames {
        match runs.last_mut() {
            Some((last, n)) if *last == frame => *n += 1,
            _ => runs.push((frame, 1)),
        }
    }
    let parts: Vec<String> =
        runs.into_iter().map(|(f, n)| if n == 1 { f } else { format!("{f} (x{n})") }).collect();
    format!("wasm backtrace: {}", parts.join(" <- "))
}

static ACTIVE_CALLS: AtomicUsize = AtomicUsize::new(0);
static TICKER: Mutex<Option<Thread>> = Mutex::new(None);

/// While at least one guest call is active the ticker thread advances the engine's epoch every
/// [`EPOCH_TICK`]; otherwise it sleeps, so an idle backend pays nothing.
pub(crate) struct ActiveCall;

impl ActiveCall {
    pub(crate) fn begin() -> Result<ActiveCall, SandboxError> {
        let mut ticker = TICKER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ticker.is_none() {
            let handle = threads::spawn_signal_free("dj-epoch-ticker", ticker_loop)
                .map_err(|e| SandboxError::Internal(format!("cannot start the epoch ticker: {e}")))?;
            *ticker = Some(handle.thread().clone());
        }
        ACTIVE_CALLS.fetch_add(1, Ordering::AcqRel);
        ticker.as_ref().expect("started above").unpark();
        Ok(ActiveCall)
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        ACTIVE_CALLS.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ticker_loop() {
    loop {
        if ACTIVE_CALLS.load(Ordering::Acquire) == 0 {
            std::thread::park_timeout(Duration::from_secs(1));
            continue;
        }
        std::thread::sleep(EPOCH_TICK);
        engine().increment_epoch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn run(wat: &str, limits: Limits) -> Result<i64, SandboxError> {
        call_export(&compile(wat.as_bytes()).unwrap(), "run", &limits, Cancel::Never)
    }

    const LOOP: &str = r#"(module (func (export "run") (loop (br 0))))"#;

    #[test]
    fn returns_the_guest_value() {
        let i64_module = r#"(module (func (export "run") (result i64) i64.const 42))"#;
        assert_eq!(run(i64_module, Limits::default()), Ok(42));
        let i32_module = r#"(module (func (export "run") (result i32) i32.const -7))"#;
        assert_eq!(run(i32_module, Limits::default()), Ok(-7));
        let unit = r#"(module (func (export "run")))"#;
        assert_eq!(run(unit, Limits::default()), Ok(0));
    }

    #[test]
    fn trap_is_reported_with_its_reason() {
        let named = r#"(module (func $compute (export "run") unreachable))"#;
        let err = run(named, Limits::default()).unwrap_err();
        match err {
            SandboxError::Trap { message, backtrace } => {
                assert_eq!(message, "wasm `unreachable` instruction executed");
                assert!(backtrace.as_deref().is_some_and(|b| b.contains("compute")), "{backtrace:?}");
            }
            other => panic!("expected a trap, got {other:?}"),
        }
        let div = r#"(module (func (export "run") (result i32) i32.const 1 i32.const 0 i32.div_s))"#;
        assert!(
            matches!(run(div, Limits::default()), Err(SandboxError::Trap { message, .. }) if message.contains("divide by zero"))
        );
    }

    #[test]
    fn infinite_loop_hits_the_time_limit_promptly() {
        let limits = Limits { timeout: Some(Duration::from_millis(100)), ..Limits::default() };
        let started = Instant::now();
        assert_eq!(run(LOOP, limits), Err(SandboxError::Timeout { limit: Duration::from_millis(100) }));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn infinite_loop_runs_out_of_fuel() {
        let limits = Limits { fuel: Some(1_000_000), ..Limits::default() };
        assert_eq!(run(LOOP, limits), Err(SandboxError::OutOfFuel { limit: 1_000_000 }));
    }

    #[test]
    fn memory_bomb_hits_the_cap() {
        // Grows by 64 KiB pages until memory.grow fails, then traps: the cap must stop it first.
        let bomb = r#"(module (memory 1)
            (func (export "run") (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable))"#;
        let limits = Limits { memory_bytes: 8 << 20, ..Limits::default() };
        assert_eq!(
            run(bomb, limits),
            Err(SandboxError::MemoryLimit { requested: (8 << 20) + (1 << 16), limit: 8 << 20 })
        );
    }

    #[test]
    fn growing_memory_a_page_at_a_time_is_linear() {
        // Almost 256 MiB in 4094 single-page grows: copying on every grow would take minutes.
        let grow = r#"(module (memory 1) (func (export "run") (result i32)
            (loop (br_if 0 (i32.lt_u (memory.grow (i32.const 1)) (i32.const 4094)))) (memory.size)))"#;
        let started = Instant::now();
        assert_eq!(run(grow, Limits { memory_bytes: 256 << 20, ..Limits::default() }), Ok(4095));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn the_memory_cap_counts_all_memories_together() {
        // Two memories of 5 MiB each against an 8 MiB cap: per-memory accounting would let it in.
        let two = r#"(module (memory 80) (memory 80) (func (export "run")))"#;
        let limits = Limits { memory_bytes: 8 << 20, ..Limits::default() };
        assert_eq!(run(two, limits), Err(SandboxError::MemoryLimit { requested: 160 << 16, limit: 8 << 20 }));
        let fits = r#"(module (memory 60) (memory 60) (func (export "run")))"#;
        assert_eq!(run(fits, limits), Ok(0));
    }

    #[test]
    fn too_many_memories_are_refused_when_compiling() {
        // The pooling allocator's per-instance limits are checked at compile time.
        let many: String =
            format!("(module {} (func (export \"run\")))", "(memory 0) ".repeat(MAX_MEMORIES + 1));
        assert!(matches!(
            compile(many.as_bytes()),
            Err(SandboxError::Resource(message)) if message.contains("exceeds the per-instance limit of 8")
        ));
    }

    #[test]
    fn oversized_initial_memory_is_refused_at_instantiation() {
        let big = r#"(module (memory 2000) (func (export "run")))"#; // 125 MiB
        let limits = Limits { memory_bytes: 64 << 20, ..Limits::default() };
        assert!(
            matches!(run(big, limits), Err(SandboxError::MemoryLimit { requested, .. }) if requested == 2000 << 16)
        );
    }

    #[test]
    fn deep_recursion_is_a_stack_overflow_trap() {
        let rec = r#"(module (func $recurse (export "run") (call $recurse)))"#;
        match run(rec, Limits::default()) {
            Err(SandboxError::Trap { message, backtrace }) => {
                assert_eq!(message, "call stack exhausted");
                let bt = backtrace.unwrap();
                assert!(bt.contains("<unknown>!recurse (x"), "repeated frames collapse: {bt}");
                assert!(bt.len() < 200, "{bt}");
            }
            other => panic!("expected a stack overflow trap, got {other:?}"),
        }
    }

    static STOP: AtomicBool = AtomicBool::new(false);
    fn stop_requested() -> bool {
        STOP.load(Ordering::Relaxed)
    }

    #[test]
    fn host_interrupt_stops_a_running_guest() {
        let module = compile(LOOP.as_bytes()).unwrap();
        let flipper = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            STOP.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        let limits = Limits { timeout: None, ..Limits::default() };
        assert_eq!(
            call_export(&module, "run", &limits, Cancel::Check(stop_requested)),
            Err(SandboxError::Interrupted)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        flipper.join().unwrap();
    }

    #[test]
    fn a_token_cancelled_from_another_thread_stops_the_guest() {
        let module = compile(LOOP.as_bytes()).unwrap();
        let token = Cancel::token();
        let remote = token.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            remote.cancel();
        });
        let limits = Limits { timeout: None, ..Limits::default() };
        let started = Instant::now();
        // The call runs on a thread of its own, as in a multi-threaded worker.
        let outcome = std::thread::spawn(move || call_export(&module, "run", &limits, token)).join().unwrap();
        assert_eq!(outcome, Err(SandboxError::Interrupted));
        assert!(started.elapsed() < Duration::from_secs(2));
        canceller.join().unwrap();
    }

    #[test]
    fn bad_modules_are_rejected_before_running() {
        assert!(matches!(compile(b"not wasm"), Err(SandboxError::InvalidModule { .. })));
        match compile(b"\x00\x01\x02\xff") {
            Err(SandboxError::InvalidModule { message, .. }) => {
                assert!(message.contains("neither"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match compile(b"(module (func (export \"run\") i32.bogus))") {
            Err(SandboxError::InvalidModule { message, detail }) => {
                assert!(!message.contains('\n'), "{message}");
                assert!(detail.is_some_and(|d| d.contains("1:")));
            }
            other => panic!("{other:?}"),
        }
        let imports = r#"(module (import "env" "f" (func)) (func (export "run")))"#;
        assert_eq!(run(imports, Limits::default()), Err(SandboxError::UnsupportedImport("env.f".into())));
        let other = r#"(module (func (export "go")) (memory (export "mem") 1))"#;
        assert_eq!(
            run(other, Limits::default()),
            Err(SandboxError::MissingExport { name: "run".into(), available: vec!["go".into()] })
        );
        let params = r#"(module (func (export "run") (param i32)))"#;
        assert!(matches!(run(params, Limits::default()), Err(SandboxError::WrongSignature { .. })));
        let floats = r#"(module (func (export "run") (result f64) f64.const 1))"#;
        assert!(matches!(run(floats, Limits::default()), Err(SandboxError::WrongSignature { .. })));
    }

    #[test]
    fn a_failed_call_leaves_the_engine_usable() {
        let _ = run(r#"(module (func (export "run") unreachable))"#, Limits::default());
        let limits = Limits { fuel: Some(10), ..Limits::default() };
        let _ = run(LOOP, limits);
        assert_eq!(
            run(r#"(module (func (export "run") (result i64) i64.const 1))"#, Limits::default()),
            Ok(1)
        );
    }
}
