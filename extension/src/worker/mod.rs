//! The worker pool: populate runs in background workers inside PostgreSQL.
//!
//! A run (`dj.populate(..., workers => N)`, `dj.populate_async`) takes a slot in shared memory
//! (`slots`) holding what it asked for, then starts N dynamic background workers. The first worker
//! fills the table's job queue (datajoint-python's `~~name` table, `datajoint_core::populate::queue`);
//! every worker then takes keys from it one at a time and makes each in its own transaction, as
//! the role that asked, through the core's populate loop (`pool`). Counters and the outcome live in
//! the slot (the caller waits on it) and in `dj._runs` (what outlives the server).

use std::ffi::CString;
use std::time::{Duration, Instant};

use datajoint_core::populate::{Order, Progress};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{DjError, DjResult};
use crate::make::source::Source;
use crate::{catalog, gucs, interrupts, preload, security};

pub mod auto;
mod launcher;
mod pipeline;
mod pool;
pub mod slots;
mod txn;

pub use slots::{Handle, Slot, Spec, State};

/// How often a waiting caller reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a run of `source` asks for, with the caller's identity and make limits. The caller must
/// not have written anything in its transaction: the workers could not see it (and could wait for
/// its locks while it waits for them, a deadlock no detector sees).
#[allow(clippy::too_many_arguments)]
pub fn spec(
    source: &Source,
    restriction: Option<&str>,
    max_calls: Option<i64>,
    suppress_errors: bool,
    recompute_stale: bool,
    order: Order,
    workers: i32,
    retries: i32,
    priority: i32,
) -> DjResult<Spec> {
    check_settings(workers, retries, priority)?;
    if let Some(n) = max_calls.filter(|n| *n < 0) {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_calls is {n}"),
            "Pass a number of keys >= 0, or NULL for all.",
        ));
    }
    let text = restriction.unwrap_or("");
    if text.len() > slots::RESTRICTION_BYTES {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "the restriction is {} bytes; a run with workers takes at most {}",
                text.len(),
                slots::RESTRICTION_BYTES
            ),
            "Restrict by fewer values, or populate without workers.",
        ));
    }
    // SAFETY: this backend's transaction state.
    if unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!(
                "populate {} with workers in a transaction that has written: the workers could not see its changes",
                source.name.qualified()
            ),
            "Commit first, or populate without workers (in this transaction).",
        ));
    }
    let mut restriction = [0u8; slots::RESTRICTION_BYTES];
    restriction[..text.len()].copy_from_slice(text.as_bytes());
    Ok(Spec {
        run_id: 0,
        // SAFETY: this backend's database and user.
        database: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        role: unsafe { pg_sys::GetUserId() }.to_u32(),
        target: catalog::oid_of(&source.name)?.to_u32(),
        workers: workers as u32,
        max_calls: max_calls.unwrap_or(-1),
        suppress_errors,
        recompute_stale,
        order: match order {
            Order::Original => 0,
            Order::Reverse => 1,
            Order::Random => 2,
        },
        retries: retries as u32,
        priority,
        timeout_ms: gucs::MAKE_TIMEOUT.get(),
        fuel_millions: gucs::MAKE_FUEL.get(),
        memory_kb: gucs::MAKE_MEMORY_LIMIT.get(),
        restriction_len: text.len(),
        restriction,
        pipeline: 0,
        member: false,
        auto: false,
    })
}

/// Refuses a run's workers, retries and priority outside their ranges.
pub fn check_settings(workers: i32, retries: i32, priority: i32) -> DjResult<()> {
    let invalid =
        |what: String, hint: &str| DjError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, what, hint);
    if !(1..=slots::MAX_RUN_WORKERS as i32).contains(&workers) {
        return Err(invalid(
            format!("workers is {workers}"),
            &format!("A run has 1 to {} workers.", slots::MAX_RUN_WORKERS),
        ));
    }
    if retries < 0 {
        return Err(invalid(
            format!("retries is {retries}"),
            "Pass how many times a failed key is tried again (0: never).",
        ));
    }
    if !(0..=255).contains(&priority) {
        return Err(invalid(
            format!("priority is {priority}"),
            "Priorities go from 0 (most urgent) to 255; the default is 5.",
        ));
    }
    Ok(())
}

/// How a run ended, from the slot or (once the slot went to another run) from dj._runs.
pub struct Ended {
    /// The run's table, quoted and schema-qualified.
    pub table: String,
    pub state: String,
    pub done: i64,
    pub errors: i64,
    pub sqlstate: Option<[u8; 5]>,
    pub error: Option<String>,
    pub remaining: Option<i64>,
}

/// How run `run_id` of this database ended, read from dj._runs with a fresh snapshot.
pub fn ended_from_catalog(run_id: i64) -> DjResult<Option<Ended>> {
    let row = security::as_extension_owner(|| {
        Ok(pgrx::Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT state, done, errors, last_error, remaining, pg_catalog.format('%I.%I', schema_name, table_name) \
                 FROM dj._runs WHERE id OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[run_id.into()],
            )?;
            if rows.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let r = rows.first();
            Ok(Some(Ended {
                table: r.get::<String>(6)?.unwrap_or_default(),
                state: r.get::<String>(1)?.unwrap_or_default(),
                done: r.get::<i64>(2)?.unwrap_or(0),
                errors: r.get::<i64>(3)?.unwrap_or(0),
                sqlstate: None,
                error: r.get::<String>(4)?,
                remaining: r.get::<i64>(5)?,
            }))
        })?)
    })?;
    Ok(row)
}

/// Runs `spec` through the pool and waits for it: (done, errors), or the error that ended it.
pub fn run_and_wait(spec: Spec, target: &str) -> DjResult<(i64, i64)> {
    let (h, run_id) = start(spec, target)?;
    let ended = outcome(h, run_id, target)?;
    Ok((ended.done, ended.errors))
}

/// Runs a pipeline (`specs` in its order, `upstream` as [`start_group`] takes it) and waits for
/// it: how each table's run ended, or the error that ended the pipeline.
pub fn run_group_and_wait(specs: Vec<Spec>, upstream: &[u16], label: &str) -> DjResult<Vec<Ended>> {
    let (handles, run_ids) = start_group(specs, upstream, label)?;
    outcome(handles[0], run_ids[0], label)?;
    run_ids
        .iter()
        .map(|id| {
            ended_from_catalog(*id)?.ok_or_else(|| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("run {id} ended out of sight"),
                    "SELECT * FROM dj.runs shows the runs.",
                )
            })
        })
        .collect()
}

/// Waits for run `h` and says how it ended: its end if done, else the error that ended it.
fn outcome(h: Handle, run_id: i64, target: &str) -> DjResult<Ended> {
    let ended = match wait(h, Some(target)) {
        Some(slot) => Ended {
            table: target.to_string(),
            state: slot.state.name().to_string(),
            done: slot.done,
            errors: slot.errors,
            sqlstate: Some(slot.sqlstate),
            error: slot.error(),
            remaining: (slot.remaining >= 0).then_some(slot.remaining),
        },
        None => ended_from_catalog(run_id)?.ok_or_else(|| {
            DjError::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("run {run_id} ended out of sight"),
                "SELECT * FROM dj.runs shows the runs.",
            )
        })?,
    };
    let code = ended.sqlstate.map_or(PgSqlErrorCode::ERRCODE_OPERATOR_INTERVENTION, pool::sqlstate_code);
    match ended.state.as_str() {
        "done" => Ok(ended),
        "cancelled" => Err(DjError::new(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            format!("run {run_id} of {target} was cancelled after {} key(s)", ended.done),
            "The keys made so far are kept; populate again to go on.",
        )),
        "failed" => {
            let message = ended.error.unwrap_or_default();
            let hint = if message.starts_with("make of ") {
                "The failed key is recorded in the jobs table; populate with suppress_errors => true to go past failures."
            } else {
                "The run's first worker could not fill the job queue, as the role that asked for the run."
            };
            Err(DjError::new(code, message, hint))
        }
        _ => Err(DjError::new(
            PgSqlErrorCode::ERRCODE_OPERATOR_INTERVENTION,
            format!(
                "run {run_id} of {target} was interrupted after {} key(s): {}",
                ended.done,
                ended.error.unwrap_or_else(|| "its workers ended".into())
            ),
            "The keys made so far are kept; populate again to go on.",
        )),
    }
}

/// Starts run `spec` (its `workers` is what the caller asked for): its slot and run id.
pub fn start(spec: Spec, target: &str) -> DjResult<(Handle, i64)> {
    let (handles, run_ids) = start_group(vec![spec], &[0], target)?;
    Ok((handles[0], run_ids[0]))
}

/// Starts a run for each of `specs` (a pipeline when more than one: the first one's workers
/// work on every member, `upstream` says which members are upstream of which, see
/// [`slots::create_group`]); their slots and run ids.
pub fn start_group(
    mut specs: Vec<Spec>,
    upstream: &[u16],
    target: &str,
) -> DjResult<(Vec<Handle>, Vec<i64>)> {
    if !slots::available() {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "populate with workers needs the datajoint library preloaded",
            preload::HINT,
        ));
    }
    let asked = specs[0].workers;
    let pipeline = specs.len() > 1;
    let mut run_ids = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter_mut().enumerate() {
        spec.run_id = security::as_extension_owner(|| {
            Ok(catalog::write_one::<i64>(
                "SELECT pg_catalog.nextval('dj._runs_id_seq'::pg_catalog.regclass)",
                &[],
            )?
            .unwrap_or(0))
        })?;
        run_ids.push(spec.run_id);
        spec.pipeline = if pipeline { run_ids[0] } else { 0 };
        spec.member = i > 0;
    }
    let run_id = run_ids[0];
    let max = gucs::max_workers();
    let (handles, slot) = slots::create_group(&specs, upstream, max).map_err(|refused| match refused {
        slots::Refused::Busy => DjError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("all {max} workers of the pool are busy (dj.max_workers)"),
            "Wait for a run to end (SELECT * FROM dj.runs), cancel one (dj.cancel), or have a superuser raise dj.max_workers.",
        ),
        slots::Refused::Full => DjError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("{} runs are under way, the most the pool holds (a pipeline takes one per table)", slots::SLOTS),
            "Wait for a run to end (SELECT * FROM dj.runs).",
        ),
    })?;
    let h = handles[0];
    let n = slot.spec.workers;
    let mut started = 0u32;
    for _ in 0..n {
        let worker = worker_of(h, &format!("datajoint worker for run {run_id}"))
            // SAFETY: this backend's pid, a plain global.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match worker.map(|w| w.wait_for_startup()) {
            // (Stopped: it started, and is done already.)
            Ok(Ok(_)) | Ok(Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)) => started += 1,
            _ => break,
        }
    }
    if started == 0 {
        for h in &handles {
            slots::update(*h, |s| s.state = State::Free);
        }
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "no background worker could be started: every max_worker_processes slot is in use",
            format!(
                "Raise max_worker_processes in postgresql.conf (now {}) and restart the server; parallel queries and other extensions share it.",
                current_setting("max_worker_processes")
            ),
        ));
    }
    for h in &handles {
        slots::update(*h, |s| s.spec.workers = started);
    }
    if started < asked {
        pgrx::notice!("populate {target}: running with {started} of the {asked} workers asked for");
    }
    Ok((handles, run_ids))
}

/// A pool worker for run `h`, named `name`.
fn worker_of(h: Handle, name: &str) -> BackgroundWorkerBuilder {
    BackgroundWorkerBuilder::new(name)
        .set_type("datajoint worker")
        .set_library("datajoint")
        .set_function("dj_worker_main")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(h.index)))
        .set_extra(&h.generation.to_string())
}

fn current_setting(name: &str) -> String {
    let name = CString::new(name).unwrap_or_default();
    // SAFETY: a built-in setting's current value, copied at once.
    unsafe {
        let value = pg_sys::GetConfigOptionByName(name.as_ptr(), std::ptr::null_mut(), true);
        if value.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(value).to_string_lossy().into_owned()
    }
}

/// Waits until the run ends; reports progress as NOTICEs when `report` names the target. A
/// cancel of this statement (Ctrl-C, statement_timeout, terminate) cancels the run first. None
/// when the slot went to another run (read the end from dj._runs).
pub fn wait(h: Handle, report: Option<&str>) -> Option<Slot> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let slot = slots::get(h)?;
        if slot.state.finished() {
            return Some(slot);
        }
        if interrupts::stop_requested() {
            if report.is_some() {
                cancel(h);
            }
            pgrx::check_for_interrupts!();
        }
        if let Some(target) = report {
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                // A pipeline's progress is its tables' together.
                let runs: Vec<Slot> = if slot.members.len > 0 {
                    slot.members.slots[..slot.members.len].iter().filter_map(|m| slots::get(*m)).collect()
                } else {
                    vec![slot]
                };
                let (done, errors, total) =
                    runs.iter().fold((0, 0, 0), |(d, e, t), s| (d + s.done, e + s.errors, t + s.total));
                let progress = Progress {
                    done,
                    errors,
                    seen: (done + errors) as usize,
                    total: total as usize,
                    elapsed: started.elapsed(),
                };
                pgrx::notice!("{}", progress.describe(target));
            }
        }
        // SAFETY: waits on this backend's own latch, as any extension's wait loop does.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                20,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}

/// From `_PG_init` (preloaded): the launcher that resumes auto populate after a server start.
pub fn register_launcher() {
    launcher::init();
    launcher::register();
}

/// Stops the unfinished auto runs of table `target` in this database (`dj.auto_populate(...,
/// false)`); their keys go back to pending.
pub fn cancel_auto(target: u32) {
    // SAFETY: this backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    for i in 0..slots::SLOTS {
        let Some(s) = slots::get_any(i) else { continue };
        if s.spec.auto && s.spec.target == target && s.spec.database == database && !s.state.finished() {
            cancel(slots::Handle { index: i, generation: s.generation });
        }
    }
}

/// Asks the run to stop: no worker takes another key, and the guests in flight stop at their
/// next epoch check (the workers poll the flag there, see [`stop_requested`]); their keys go back
/// to pending. Whether it was running.
pub fn cancel(h: Handle) -> bool {
    // A pipeline's tables are cancelled together, through its first table's run.
    let h = match slots::get(h) {
        Some(s) if s.spec.member => slots::find(s.spec.pipeline).map_or(h, |(first, _)| first),
        _ => h,
    };
    slots::update(h, |s| {
        let running = !s.state.finished();
        s.cancel |= running;
        running
    })
    .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// The worker process

/// A worker's guest stops when PostgreSQL wants it to (cancel, terminate) or its run was cancelled.
pub fn stop_requested() -> bool {
    // SAFETY: set once in dj_worker_main, before any guest runs.
    let h = unsafe { MINE };
    interrupts::stop_requested() || slots::stopping(h)
}

/// PostgreSQL's own signal handlers, as C functions (pgrx's bindings wrap them as Rust functions,
/// which `pqsignal` cannot take).
mod postgres {
    unsafe extern "C-unwind" {
        pub fn die(signal: std::ffi::c_int);
        pub fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
    }
}

/// The run this process works for, for the exit callback and the guest's stop check.
static mut MINE: Handle = Handle { index: usize::MAX, generation: 0 };

/// Entry point of a pool worker (`bgw_function_name`): `arg` is the run's slot, `bgw_extra` the
/// slot's generation.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn dj_worker_main(arg: pg_sys::Datum) {
    // SAFETY: signal setup before signals are unblocked, as PostgreSQL's own workers do: SIGTERM
    // is PostgreSQL's `die` (so a terminate reaches CHECK_FOR_INTERRUPTS and the guest's epoch
    // check), SIGINT stays the statement-cancel handler the postmaster installed, SIGHUP reloads.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres::die));
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(postgres::SignalHandlerForConfigReload));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let h = Handle { index: arg.value(), generation: BackgroundWorker::get_extra().parse().unwrap_or(0) };
    let attached = slots::update(h, |s| {
        if s.state.finished() || s.closing {
            return None;
        }
        let free = s.pids.iter_mut().find(|p| **p == 0)?;
        // SAFETY: this process's pid.
        *free = unsafe { pg_sys::MyProcPid };
        s.live += 1;
        Some(s.spec.database)
    });
    let Some(Some(database)) = attached else { return };
    // SAFETY: plain globals of this process; the callback runs at exit, on this thread.
    unsafe {
        MINE = h;
        pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0));
        // As the bootstrap superuser: each key then runs as the role that asked (pool::as_role).
        pg_sys::BackgroundWorkerInitializeConnectionByOid(pg_sys::Oid::from(database), pg_sys::InvalidOid, 0);
    }
    pool::work(h);
}

/// At exit, however the worker ends (a FATAL from a terminate included): a worker still listed
/// leaves the run broken; the last one, or the one that was ending the run, ends it as
/// interrupted (or cancelled) if nobody did (dj._runs learns it lazily).
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    // SAFETY: set once in dj_worker_main.
    let h = unsafe { MINE };
    // SAFETY: this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    slots::update(h, |s| {
        if let Some(p) = s.pids.iter_mut().find(|p| **p == pid) {
            *p = 0;
            s.live = s.live.saturating_sub(1);
            s.broken = true;
        } else if s.closer != pid {
            // Left the run normally, and another worker is ending it.
            return;
        }
        if s.live == 0 && !s.state.finished() {
            s.state = if s.cancel { State::Cancelled } else { State::Interrupted };
            s.finished = slots::now();
        }
    });
    slots::end_members(h);
}
