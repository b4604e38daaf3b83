//! A worker's transactions and the identity they run under: each statement that touches a
//! user's tables runs as the role that asked for the run, as a security-restricted operation with
//! the extension's pinned settings, up to and including the triggers its commit fires.

use std::ffi::CString;

use pgrx::prelude::*;

use crate::make::Failure;
use crate::security::{self, Pinned};

/// Starts a transaction with SPI connected and a snapshot.
pub(super) fn begin() {
    // SAFETY: a worker between transactions, as PostgreSQL's own workers start one.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::SPI_connect();
    }
}

/// Commits the transaction [`begin`] started.
pub(super) fn commit() {
    // SAFETY: pairs with `begin`.
    unsafe {
        pg_sys::SPI_finish();
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
}

/// Fires the triggers deferred to commit now, while the role's identity is in force: a commit
/// after the identity is dropped would run them as the worker's own (superuser) identity.
pub(super) fn fire_deferred() -> Result<(), Failure> {
    // SAFETY: what COMMIT does first (and finds nothing left to do after this), outside any
    // query; a trigger's error is raised as a Rust panic by pgrx's guard, as from SPI.
    unsafe { pg_sys::AfterTriggerFireDeferred() };
    Ok(())
}

/// Runs `f` as `role` in a transaction of its own, committed (its deferred triggers fired as
/// the role) when it returns Ok.
pub(super) fn transaction_as<T>(role: u32, f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    transaction(|| run_as(role, f))
}

/// Runs `f` as `role` in the open transaction, its deferred triggers fired as the role when it
/// returns Ok.
pub(super) fn run_as<T>(role: u32, f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    let identity = identity(role);
    let out = f()?;
    fire_deferred()?;
    drop(identity);
    Ok(out)
}

/// Runs `f` in a transaction of its own, committed when it returns Ok (as the worker itself: for
/// the extension's own catalog only).
pub(super) fn transaction<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    begin();
    let out = f();
    match out {
        Ok(_) => commit(),
        // SAFETY: ends the transaction `begin` started.
        Err(_) => unsafe { pg_sys::AbortCurrentTransaction() },
    }
    out
}

/// The role that asked for the run, for as long as this lives: as a security-restricted
/// operation (no SET ROLE, no temporary objects), so nothing run meanwhile gets the worker's own
/// identity back. The abort of a transaction restores the identity too.
pub(super) struct AsRole(pg_sys::Oid, i32);

pub(super) fn as_role(role: u32) -> AsRole {
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: the calls PostgreSQL makes to run maintenance as a table's owner.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(role),
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    AsRole(user, context)
}

impl Drop for AsRole {
    fn drop(&mut self) {
        // SAFETY: restores what GetUserIdAndSecContext returned.
        unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
    }
}

/// What a transaction run as the role holds: dropped before it commits.
pub(super) struct Identity {
    _pin: Pinned,
    _role: AsRole,
}

pub(super) fn identity(role: u32) -> Identity {
    let _role = as_role(role);
    Identity { _pin: security::pin(), _role }
}

pub(super) fn set_local(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: SET LOCAL, inside a transaction.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// What the process title and pg_stat_activity show.
pub(super) fn show(activity: &str) {
    let text = CString::new(activity.replace('\0', "")).unwrap_or_default();
    // SAFETY: both copy the string.
    unsafe {
        pg_sys::set_ps_display(text.as_ptr());
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr());
    }
}

pub(super) fn wait_a_little(ms: i64) {
    // SAFETY: waits on this process's latch; interrupts (and barriers) are handled after.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
    pgrx::check_for_interrupts!();
}
