//! The one place where core errors become PostgreSQL errors: each with a SQLSTATE, a message that
//! says what went wrong and a HINT that says what to do.

use datajoint_core::sandbox::SandboxError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raises an ERROR with a SQLSTATE, message and HINT. Never returns.
pub fn raise(code: PgSqlErrorCode, message: String, hint: &str, funcname: &'static str) -> ! {
    ErrorReport::new(code, message, funcname).set_hint(hint).report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises the ERROR for a failed guest call. Never returns.
pub fn raise_sandbox(err: SandboxError, funcname: &'static str) -> ! {
    use PgSqlErrorCode::*;
    let (code, hint, detail) = match &err {
        SandboxError::Interrupted => {
            // The guest stopped because Postgres has an interrupt pending (cancel, timeout,
            // terminate): let Postgres raise its own error, with its own SQLSTATE.
            pgrx::check_for_interrupts!();
            (ERRCODE_QUERY_CANCELED, "The call was interrupted.".to_string(), None)
        }
        SandboxError::Timeout { .. } => (
            ERRCODE_QUERY_CANCELED,
            "Raise dj.make_timeout (SET dj.make_timeout = '10min'), or make the function faster.".into(),
            None,
        ),
        SandboxError::OutOfFuel { .. } => (
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "Raise dj.make_fuel (millions of instructions; 0 = no budget).".into(),
            None,
        ),
        SandboxError::MemoryLimit { .. } => (
            ERRCODE_OUT_OF_MEMORY,
            "A superuser can raise dj.make_memory_limit; otherwise process the data in smaller pieces."
                .into(),
            None,
        ),
        SandboxError::Resource(_) => (
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "The module needs more instances, memories or tables than the sandbox allows.".into(),
            None,
        ),
        SandboxError::Trap { backtrace, .. } => (
            ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            "The WebAssembly code failed; the DETAIL shows where.".into(),
            backtrace.clone(),
        ),
        SandboxError::InvalidModule { detail, .. } => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            "Pass the bytes of a WebAssembly module (binary, or text format).".into(),
            detail.clone(),
        ),
        SandboxError::UnsupportedImport(_) => (
            ERRCODE_FEATURE_NOT_SUPPORTED,
            "This entry point runs self-contained modules; remove the import.".into(),
            None,
        ),
        SandboxError::MissingExport { available, .. } => (
            ERRCODE_UNDEFINED_FUNCTION,
            if available.is_empty() {
                "The module exports no functions.".to_string()
            } else {
                format!("The module exports: {}.", available.join(", "))
            },
            None,
        ),
        SandboxError::WrongSignature { .. } => (
            ERRCODE_INVALID_FUNCTION_DEFINITION,
            "Export a function that takes no arguments and returns nothing, an i32 or an i64.".into(),
            None,
        ),
        SandboxError::Internal(_) => {
            (ERRCODE_INTERNAL_ERROR, "This is a bug in datajoint; please report it.".into(), None)
        }
    };
    let mut report = ErrorReport::new(code, err.to_string(), funcname).set_hint(hint);
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
