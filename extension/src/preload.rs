//! Background workers, shared memory and hooks need the library loaded by the postmaster
//! (`shared_preload_libraries`). Without it the extension still loads and warns once, with
//! [`HINT`]. Populate with workers refuses with the same HINT.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub const HINT: &str = "Add datajoint to shared_preload_libraries in postgresql.conf \
                        (shared_preload_libraries = 'datajoint') and restart the server.";

/// Whether the library is being preloaded (shared memory and workers are possible).
pub fn check_at_load() -> bool {
    // SAFETY: a plain global the postmaster sets while loading preload libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            "datajoint was loaded without shared_preload_libraries: background populate is unavailable",
            "_PG_init",
        )
        .set_hint(HINT)
        .report(PgLogLevel::WARNING);
    }
    preloading
}
