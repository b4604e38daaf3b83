//! When a running guest must stop for Postgres' sake.

use pgrx::pg_sys;

/// True when Postgres wants the current statement or backend to end: a cancel
/// (pg_cancel_backend, statement_timeout, lock_timeout) or a terminate, in a state where
/// CHECK_FOR_INTERRUPTS would act on it.
///
/// Not `InterruptPending` alone: Postgres also sets it for work it does in passing (client
/// connection checks, proc-signal barriers, memory-context logging), which must not cancel a
/// guest. Those are handled at the next CHECK_FOR_INTERRUPTS after the call.
///
/// Polled from the guest's epoch callback, on the backend's main thread.
pub fn stop_requested() -> bool {
    // SAFETY: plain flags that Postgres' signal handlers and CHECK_FOR_INTERRUPTS maintain; this
    // reads them on the main thread, as ProcessInterrupts does.
    unsafe {
        if pg_sys::InterruptHoldoffCount != 0 || pg_sys::CritSectionCount != 0 {
            return false;
        }
        pg_sys::ProcDiePending != 0
            || (pg_sys::QueryCancelPending != 0 && pg_sys::QueryCancelHoldoffCount == 0)
    }
}
