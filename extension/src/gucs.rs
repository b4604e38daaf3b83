//! Every `dj.*` setting, registered in one place. The `dj` prefix is reserved, so a misspelt
//! setting is an error instead of a silently ignored placeholder.

use std::time::Duration;

use datajoint_core::sandbox::Limits;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

pub static MAKE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);
pub static MAKE_MEMORY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
pub static MAKE_FUEL: GucSetting<i32> = GucSetting::<i32>::new(0);

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
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"dj".as_ptr()) };
}

/// The sandbox limits in force for the current call, read from the settings.
pub fn make_limits() -> Limits {
    let timeout_ms = MAKE_TIMEOUT.get();
    let fuel_millions = MAKE_FUEL.get();
    Limits {
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
        fuel: (fuel_millions > 0).then(|| fuel_millions as u64 * 1_000_000),
        memory_bytes: MAKE_MEMORY_LIMIT.get() as usize * 1024,
    }
}
