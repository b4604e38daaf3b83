//! Every `dj.*` setting, registered in one place. The `dj` prefix is reserved, so a misspelt
//! setting is an error instead of a silently ignored placeholder.

use std::time::Duration;

use datajoint_core::sandbox::{self, EngineSettings, Limits};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

pub static MAKE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);
pub static MAKE_MEMORY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
pub static MAKE_FUEL: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAKE_UPLOAD_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(10 * 1024 * 1024);
pub static MAX_MODULE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
pub static MODULE_COMPILE_MEMORY: GucSetting<i32> = GucSetting::<i32>::new(2 * 1024 * 1024);
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
pub static WORKER_IDLE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DEFAULT_STORE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(Some(c"local"));

pub fn init() {
    GucRegistry::define_int_guc(
        c"dj.make_timeout",
        c"Wall-clock limit of one make-function call.",
        c"A guest still running after this long is stopped with SQLSTATE 57014. 0 disables the limit; \
          statement_timeout and pg_cancel_backend still apply.",
        &MAKE_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dj.make_memory_limit",
        c"Largest linear memory a make-function instance may grow to.",
        c"Growing past it stops the guest with SQLSTATE 53200. Only superusers may change it.",
        &MAKE_MEMORY_LIMIT,
        1024,
        4 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"dj.make_fuel",
        c"Instruction budget of one make-function call, in millions of fuel units.",
        c"Roughly one unit per WebAssembly instruction; running out stops the guest with SQLSTATE 54000. \
          0 means no budget.",
        &MAKE_FUEL,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dj.make_upload_limit",
        c"Bytes a make-function call may spool for its uploads.",
        c"Uploads past 8 MiB are spooled to temporary files; more than this (or than temp_file_limit) stops \
          the call with SQLSTATE 53400. Only superusers may change it.",
        &MAKE_UPLOAD_LIMIT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"dj.max_module_size",
        c"Largest component dj.register_module accepts.",
        c"Bigger components are refused with SQLSTATE 54000 before anything compiles them. Only superusers may change it.",
        &MAX_MODULE_SIZE,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"dj.module_compile_memory",
        c"Memory the compiler of a module may use.",
        c"Modules compile in a child process whose address space may grow by this much; a module that needs \
          more is refused with SQLSTATE 53200. Only superusers may change it.",
        &MODULE_COMPILE_MEMORY,
        64 * 1024,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"dj.max_workers",
        c"Background workers the populate pool may run at once, over all databases.",
        c"A run asking for more gets what is left (at least one, or an error with SQLSTATE 53400). Workers also \
          count against max_worker_processes.",
        &MAX_WORKERS,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dj.worker_idle_timeout",
        c"How long a pool worker with nothing to do waits for a key before it exits.",
        c"A run's keys scheduled later (retries) are waited for when they are due within this time; otherwise the \
          worker ends with its run's queue empty.",
        &WORKER_IDLE_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"dj.default_store",
        c"The store of codecs declared without a store name (<blob@>, <attach@>).",
        c"One of dj.stores; the embedded default is the file store local, under the data directory.",
        &DEFAULT_STORE,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"dj".as_ptr()) };
}

/// The engine of this process, sized on first use: each memory slot of its instance pool is as
/// large as the greater of the configured `dj.make_memory_limit` (postgresql.conf, ALTER SYSTEM,
/// ALTER ROLE) and the session's value at that moment. A session that later raises its limit above
/// that size gets the slot size (see [`make_limits`]).
pub fn engine_settings() -> EngineSettings {
    let configured = unsafe {
        // SAFETY: a registered setting's reset value, a C string owned by the GUC machinery.
        let reset = pg_sys::GetConfigOptionResetString(c"dj.make_memory_limit".as_ptr());
        (!reset.is_null())
            .then(|| std::ffi::CStr::from_ptr(reset).to_str().ok()?.parse::<usize>().ok())
            .flatten()
            .unwrap_or(0)
    };
    let kb = configured.max(MAKE_MEMORY_LIMIT.get() as usize);
    sandbox::configure(EngineSettings { max_memory: kb * 1024, ..EngineSettings::default() })
}

/// The sandbox limits in force for the current call, read from the settings.
pub fn make_limits() -> Limits {
    limits(MAKE_TIMEOUT.get(), MAKE_FUEL.get(), MAKE_MEMORY_LIMIT.get())
}

/// The sandbox limits of `dj.make_timeout` (ms), `dj.make_fuel` (millions) and
/// `dj.make_memory_limit` (kB) as given (a pool run carries its caller's).
pub fn limits(timeout_ms: i32, fuel_millions: i32, memory_kb: i32) -> Limits {
    let memory = memory_kb as usize * 1024;
    Limits {
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
        fuel: (fuel_millions > 0).then(|| fuel_millions as u64 * 1_000_000),
        memory_bytes: memory.min(engine_settings().max_memory),
    }
}

pub fn max_workers() -> u32 {
    MAX_WORKERS.get().max(1) as u32
}

pub fn worker_idle_timeout() -> Duration {
    Duration::from_millis(WORKER_IDLE_TIMEOUT.get().max(0) as u64)
}

/// Bytes a component may have to be registered.
pub fn max_module_size() -> usize {
    MAX_MODULE_SIZE.get() as usize * 1024
}

/// Bytes the compiler of a module may use.
pub fn module_compile_memory() -> usize {
    MODULE_COMPILE_MEMORY.get() as usize * 1024
}

/// The store `<codec@>` means.
pub fn default_store() -> String {
    DEFAULT_STORE.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "local".into())
}
