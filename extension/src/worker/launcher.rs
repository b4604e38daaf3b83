//! The launcher: a background worker started with the server (and after a crash restart) that
//! resumes populate on insert. It connects to no database; it lists the databases and starts a
//! short-lived worker in each ([`dj_resume_main`]), which wakes the auto-populated tables whose
//! keys are still queued (a key queued before a restart is never lost: it waits in the jobs
//! table). Then it sleeps until the server stops.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;

use super::auto::{self, Wanted};
use super::txn::{begin, commit};
use crate::{catalog, security};
use datajoint_core::dependencies::Table;
use datajoint_core::populate;

/// From `_PG_init` (preloaded): registers the launcher.
pub fn register() {
    BackgroundWorkerBuilder::new("datajoint launcher")
        .set_type("datajoint launcher")
        .set_library("datajoint")
        .set_function("dj_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // Started again after a crash restart, when every process was ended.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn signals() {
    // SAFETY: as the pool's workers do (see dj_worker_main), before signals are unblocked.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(super::postgres::die));
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(super::postgres::SignalHandlerForConfigReload));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Entry point of the launcher (`bgw_function_name`).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn dj_launcher_main(_arg: pg_sys::Datum) {
    signals();
    // SAFETY: no database: the shared catalogs only, as PostgreSQL's autovacuum launcher.
    unsafe { pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0) };
    for database in databases() {
        let started = BackgroundWorkerBuilder::new(&format!("datajoint resume in database {database}"))
            .set_type("datajoint launcher")
            .set_library("datajoint")
            .set_function("dj_resume_main")
            .enable_spi_access()
            .set_argument(Some(pg_sys::Datum::from(database)))
            .load_dynamic();
        if started.is_err() {
            pgrx::log!("datajoint launcher: no worker slot to resume auto populate in database {database}");
        }
    }
    loop {
        // SAFETY: waits on this process's latch; exits with the postmaster.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                -1,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

/// The databases that take connections (templates excluded), read from pg_database directly.
fn databases() -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: a catalog scan in a transaction of its own, as autovacuum's launcher lists them.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::GetTransactionSnapshot();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let data = (*tuple).t_data;
            let form =
                (data as *const u8).add((*data).t_hoff as usize) as *const pg_sys::FormData_pg_database;
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid.to_u32());
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    out
}

/// Entry point of a resume worker: `arg` is the database. Wakes each auto-populated table of
/// the database with keys pending or reserved (by processes gone with the restart), then exits.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn dj_resume_main(arg: pg_sys::Datum) {
    signals();
    let database: u32 = arg.value() as u32;
    // SAFETY: as the pool's workers connect (as the bootstrap superuser, reading only).
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(pg_sys::Oid::from(database), pg_sys::InvalidOid, 0)
    };
    let _ = BackgroundWorker::get_extra();
    begin();
    let wanted = {
        let _pin = security::pin();
        queued_tables().unwrap_or_else(|e| {
            pgrx::log!("datajoint: auto populate not resumed in database {database}: {e}");
            Vec::new()
        })
    };
    commit();
    auto::wake(database, &wanted);
}

/// The auto-populated tables of this database whose jobs tables hold pending or reserved keys.
fn queued_tables() -> Result<Vec<Wanted>, pgrx::spi::Error> {
    let installed = Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('dj._auto_populate') IS NOT NULL")?;
    if installed != Some(true) {
        return Ok(Vec::new());
    }
    let found = Spi::connect(|client| {
        let rows = client.select(
            "SELECT c.oid, r.oid, a.workers, a.priority, a.retries, a.make_timeout, a.make_fuel, \
                    a.make_memory_limit, a.schema_name, a.table_name \
             FROM dj._auto_populate a \
             JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) a.schema_name \
             JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid \
                  AND c.relname OPERATOR(pg_catalog.=) a.table_name \
             JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) a.role_name",
            None,
            &[],
        )?;
        let mut found = Vec::new();
        for row in rows {
            let table = Table::new(
                row.get::<String>(9)?.unwrap_or_default(),
                row.get::<String>(10)?.unwrap_or_default(),
            );
            found.push((
                Wanted {
                    target: row.get::<pg_sys::Oid>(1)?.map_or(0, |o| o.to_u32()),
                    role: row.get::<pg_sys::Oid>(2)?.map_or(0, |o| o.to_u32()),
                    workers: row.get::<i32>(3)?.unwrap_or(1) as u32,
                    priority: row.get::<i32>(4)?.unwrap_or(5),
                    retries: row.get::<i32>(5)?.unwrap_or(0) as u32,
                    timeout_ms: row.get::<i32>(6)?.unwrap_or(0),
                    fuel_millions: row.get::<i32>(7)?.unwrap_or(0),
                    memory_kb: row.get::<i32>(8)?.unwrap_or(0),
                    added: 0,
                },
                populate::jobs::jobs_table(&table),
            ));
        }
        Ok::<_, pgrx::spi::Error>(found)
    })?;
    let mut out = Vec::new();
    for (wanted, jobs) in found {
        if !catalog::table_exists(&jobs.schema, &jobs.name).unwrap_or(false) {
            continue;
        }
        let queued = Spi::get_one::<i64>(&format!(
            "SELECT pg_catalog.count(*) FROM {} WHERE \"status\" OPERATOR(pg_catalog.=) ANY ('{{pending,reserved}}')",
            jobs.qualified()
        ))?
        .unwrap_or(0);
        if queued > 0 {
            out.push(Wanted { added: queued, ..wanted });
        }
    }
    Ok(out)
}
