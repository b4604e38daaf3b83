//! The launcher: a background worker started with the server (and after a crash restart) that
//! resumes populate on insert and keeps its schedules. It connects to no database; it lists the
//! databases and starts a short-lived worker in each ([`dj_resume_main`]), which wakes the
//! auto-populated tables whose keys are still queued (a key queued before a restart is never
//! lost: it waits in the jobs table), refreshes the queues of the tables whose schedule
//! (`every`) is due, and tells the launcher when its database is due next. The launcher sleeps
//! until then, or until `dj.auto_populate` changes a schedule ([`reschedule`]).

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use super::auto::{self, Wanted};
use super::txn::{begin, commit, transaction, transaction_as};
use crate::pipeline::auto::{AUTO_TABLES, CONFIG_COLUMNS};
use crate::{catalog, security};
use datajoint_core::dependencies::Table;
use datajoint_core::populate;

/// Databases whose schedules the launcher keeps at once.
const SCHEDULED: usize = 64;

/// When each database's schedules are due next (Unix seconds; 0: none), and the launcher's pid.
#[derive(Clone, Copy)]
pub struct Schedules {
    pid: i32,
    due: [(u32, f64); SCHEDULED],
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Schedules {}

impl Default for Schedules {
    fn default() -> Self {
        Schedules { pid: 0, due: [(0, 0.0); SCHEDULED] }
    }
}

static SCHEDULES: PgLwLock<Schedules> = unsafe { PgLwLock::new(c"datajoint schedules") };

/// Records that `database`'s schedules are due at `at` (Unix seconds; 0: none), and wakes the
/// launcher if that is sooner than it knew. Raises no error (it runs after commits).
pub fn due(database: u32, at: f64) {
    let pid = {
        let mut s = SCHEDULES.exclusive();
        let slot = match s.due.iter().position(|(d, _)| *d == database) {
            Some(i) => Some(i),
            None => s.due.iter().position(|(d, a)| *d == 0 || *a == 0.0),
        };
        let Some(i) = slot else { return };
        s.due[i] = if at > 0.0 { (database, at) } else { (0, 0.0) };
        s.pid
    };
    if pid != 0 {
        // SAFETY: the latch of a live process, looked up under ProcArrayLock.
        unsafe {
            let proc_ = pg_sys::BackendPidGetProc(pid);
            if !proc_.is_null() {
                pg_sys::SetLatch(&mut (*proc_).procLatch);
            }
        }
    }
}

/// After `dj.auto_populate` changed a schedule in `database` (committed): the database's
/// resume worker runs now, and says when it is due next.
pub fn reschedule(database: u32) {
    due(database, super::slots::now());
}

/// The databases due by `now` (taken off the list) and when the next one is due (0: none).
fn take_due(now: f64) -> (Vec<u32>, f64) {
    let mut s = SCHEDULES.exclusive();
    let mut due = Vec::new();
    let mut next = 0.0f64;
    for (database, at) in s.due.iter_mut() {
        if *at == 0.0 {
            continue;
        }
        if *at <= now {
            due.push(*database);
            *at = 0.0;
        } else if next == 0.0 || *at < next {
            next = *at;
        }
    }
    (due, next)
}

/// From `_PG_init` (preloaded): the schedules' shared memory.
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(SCHEDULES);
}

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
    SCHEDULES.exclusive().pid = unsafe { pg_sys::MyProcPid };
    for database in databases() {
        resume(database);
    }
    loop {
        let (due, next) = take_due(super::slots::now());
        for database in due {
            resume(database);
        }
        let timeout = if next > 0.0 {
            ((next - super::slots::now()) * 1000.0).clamp(1.0, 3_600_000.0) as i64
        } else {
            -1
        };
        // SAFETY: waits on this process's latch; exits with the postmaster.
        unsafe {
            let events = pg_sys::WL_LATCH_SET
                | pg_sys::WL_EXIT_ON_PM_DEATH
                | if timeout > 0 { pg_sys::WL_TIMEOUT } else { 0 };
            pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, timeout, pg_sys::PG_WAIT_EXTENSION);
            pg_sys::ResetLatch(pg_sys::MyLatch);
            if pg_sys::ConfigReloadPending != 0 {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        pgrx::check_for_interrupts!();
    }
}

/// Starts the resume worker of `database`.
fn resume(database: u32) {
    let started = BackgroundWorkerBuilder::new(&format!("datajoint resume in database {database}"))
        .set_type("datajoint launcher")
        .set_library("datajoint")
        .set_function("dj_resume_main")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(database)))
        .load_dynamic();
    if started.is_err() {
        pgrx::log!("datajoint launcher: no worker slot to resume auto populate in database {database}");
        // Tried again in a minute.
        due(database, super::slots::now() + 60.0);
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
    scheduled(database);
}

/// Refreshes the queue of each table of this database whose schedule is due (as its role, as a
/// populate run's first worker fills its queue), wakes its run, and tells the launcher when the
/// database is due next.
fn scheduled(database: u32) {
    begin();
    let tables = {
        let _pin = security::pin();
        Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('dj._auto_populate') IS NOT NULL")
            .ok()
            .flatten()
            .filter(|installed| *installed)
            .and_then(|_| scheduled_tables().ok())
            .unwrap_or_default()
    };
    commit();
    let now = super::slots::now();
    let mut next = 0.0f64;
    for (wanted, every, last) in tables {
        let at = if last > 0.0 { last + every } else { now };
        if at > now {
            next = if next == 0.0 { at } else { next.min(at) };
            continue;
        }
        let spec = auto::spec_of(database, &wanted);
        let queued = transaction(|| {
            let _pin = security::pin();
            Spi::run_with_args(
                "UPDATE dj._auto_populate a SET scheduled = pg_catalog.now() FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1 AND a.schema_name OPERATOR(pg_catalog.=) n.nspname \
                 AND a.table_name OPERATOR(pg_catalog.=) c.relname",
                &[pg_sys::Oid::from(wanted.target).into()],
            )?;
            Ok(())
        })
        .and_then(|_| transaction_as(wanted.role, || super::pool::fill(&spec, None)));
        match queued {
            Ok(n) => auto::wake(database, &[Wanted { added: n, ..wanted }]),
            Err(e) => pgrx::log!("datajoint: scheduled auto populate failed: {}", e.parts().1),
        }
        let at = now + every;
        next = if next == 0.0 { at } else { next.min(at) };
    }
    due(database, next);
}

/// The auto-populated tables of this database with a schedule: each with its interval and when
/// it was last refreshed by it (seconds; 0: never).
fn scheduled_tables() -> Result<Vec<(Wanted, f64, f64)>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT c.oid, r.oid, {CONFIG_COLUMNS}, \
                        pg_catalog.date_part('epoch', a.every)::pg_catalog.float8, \
                        coalesce(pg_catalog.date_part('epoch', a.scheduled)::pg_catalog.float8, 0) \
                 {AUTO_TABLES} WHERE a.every IS NOT NULL"
            ),
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push((
                wanted_of(&row)?,
                row.get::<f64>(9)?.unwrap_or(0.0).max(1.0),
                row.get::<f64>(10)?.unwrap_or(0.0),
            ));
        }
        Ok(out)
    })
}

fn wanted_of(row: &pgrx::spi::SpiHeapTupleData) -> Result<Wanted, pgrx::spi::Error> {
    Ok(Wanted {
        target: row.get::<pg_sys::Oid>(1)?.map_or(0, |o| o.to_u32()),
        role: row.get::<pg_sys::Oid>(2)?.map_or(0, |o| o.to_u32()),
        workers: row.get::<i32>(3)?.unwrap_or(1) as u32,
        priority: row.get::<i32>(4)?.unwrap_or(5),
        retries: row.get::<i32>(5)?.unwrap_or(0) as u32,
        timeout_ms: row.get::<i32>(6)?.unwrap_or(0),
        fuel_millions: row.get::<i32>(7)?.unwrap_or(0),
        memory_kb: row.get::<i32>(8)?.unwrap_or(0),
        added: 0,
    })
}

/// The auto-populated tables of this database whose jobs tables hold pending or reserved keys.
fn queued_tables() -> Result<Vec<Wanted>, pgrx::spi::Error> {
    let installed = Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('dj._auto_populate') IS NOT NULL")?;
    if installed != Some(true) {
        return Ok(Vec::new());
    }
    let found = Spi::connect(|client| {
        let rows = client.select(
            &format!("SELECT c.oid, r.oid, {CONFIG_COLUMNS}, a.schema_name, a.table_name {AUTO_TABLES}"),
            None,
            &[],
        )?;
        let mut found = Vec::new();
        for row in rows {
            let table = Table::new(
                row.get::<String>(9)?.unwrap_or_default(),
                row.get::<String>(10)?.unwrap_or_default(),
            );
            found.push((wanted_of(&row)?, populate::jobs::jobs_table(&table)));
        }
        Ok::<_, pgrx::spi::Error>(found)
    })?;
    let mut out = Vec::new();
    for (wanted, jobs) in found {
        if !catalog::table_exists(&jobs.schema, &jobs.name).unwrap_or(false) {
            continue;
        }
        // A user's table: read as the role that owns the auto populate, never as this worker.
        let count = format!(
            "SELECT pg_catalog.count(*) FROM {} WHERE \"status\" OPERATOR(pg_catalog.=) ANY ('{{pending,reserved}}')",
            jobs.qualified()
        );
        let queued = security::as_role(pg_sys::Oid::from(wanted.role), || {
            crate::make::in_subtransaction(|| Ok(Spi::get_one::<i64>(&count)?))
        })
        .ok()
        .flatten()
        .unwrap_or(0);
        if queued > 0 {
            out.push(Wanted { added: queued, ..wanted });
        }
    }
    Ok(out)
}
