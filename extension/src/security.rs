//! Who runs the extension's SQL, and in what setting.
//!
//! Every entry point that runs SQL first pins the settings that decide what that SQL means
//! ([`pin`]): `search_path` to `pg_catalog, pg_temp`, so no operator, function or table a caller
//! puts on the path can stand in for PostgreSQL's own, and `standard_conforming_strings` on, so
//! the literals in the extension's statements read as written. The few statements that must run
//! as the extension's owner (the catalog of modules and machine code, which no other role may
//! write) run through [`as_extension_owner`], as a security-restricted operation.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::catalog;
use crate::error::{DjError, DjResult};

/// The settings every statement of the extension runs under.
const PINNED: [(&CStr, &CStr); 2] =
    [(c"search_path", c"pg_catalog, pg_temp"), (c"standard_conforming_strings", c"on")];

/// The caller's settings come back when this is dropped (as a function's `SET` clause does).
#[must_use]
pub struct Pinned {
    level: i32,
}

/// Pins `search_path` and `standard_conforming_strings` until the returned guard is dropped.
pub fn pin() -> Pinned {
    // SAFETY: the same calls PostgreSQL makes for a function's SET clause (fmgr_security_definer),
    // on the backend's main thread inside a transaction.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in PINNED {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        Pinned { level }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // On an error the (sub)transaction's abort restores every nesting level itself.
        if !std::thread::panicking() {
            // SAFETY: pops the level `pin` pushed; guards drop in reverse order of creation.
            unsafe { pg_sys::AtEOXact_GUC(true, self.level) };
        }
    }
}

/// The role that owns the extension (a superuser: the extension is not trusted).
fn extension_owner() -> DjResult<pg_sys::Oid> {
    let _pin = pin();
    catalog::read_one::<pg_sys::Oid>(
        "SELECT e.extowner FROM pg_catalog.pg_extension e \
         WHERE e.extname OPERATOR(pg_catalog.=) 'datajoint'::pg_catalog.name",
        &[],
    )?
    .ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension datajoint is not installed in this database",
            "CREATE EXTENSION datajoint first.",
        )
    })
}

/// Runs `f` as the extension's owner, for the catalog only the extension may write (modules,
/// makes, machine code): as a security-restricted operation (no SET ROLE, no temporary objects,
/// nothing deferred past it) with the pinned settings, so nothing of the caller's session can
/// run as the owner. The caller's identity and settings come back on every exit, errors
/// included. The statements `f` runs name everything with its schema.
pub fn as_extension_owner<T>(f: impl FnOnce() -> DjResult<T>) -> DjResult<T> {
    let owner = extension_owner()?;
    as_role(owner, f)
}

/// Runs `f` as `role`, as a security-restricted operation with the pinned settings (see
/// [`as_extension_owner`]); the caller's identity and settings come back on every exit.
pub fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores what GetUserIdAndSecContext returned.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let _pin = pin();
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: the calls PostgreSQL makes around maintenance commands run as a table's owner.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            role,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        Restore(user, context)
    };
    f()
}

/// The role running the statement (`current_user`).
pub fn current_role() -> String {
    // SAFETY: the name of the current user id, which exists while the statement runs.
    unsafe { CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy()
        .into_owned()
}
