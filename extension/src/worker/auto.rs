//! Populate on insert: the runs of auto-populated tables (`dj.auto_populate`). A trigger on each
//! of a table's key parents queues the keys new rows complete, in the writing transaction, and
//! asks for the table here ([`want`]); when that transaction commits, the table's auto run is
//! woken, or started if it has none ([`wake`]). An auto run's workers wait for more keys until
//! `dj.worker_idle_timeout` passes without any. After a server start the launcher
//! (`super::launcher`) wakes the tables whose keys are still queued.

use std::cell::RefCell;

use pgrx::prelude::*;

use super::slots::{self, Spec, Woken};
use crate::gucs;

/// An auto-populated table whose keys a transaction queued, with what its run asks for.
#[derive(Clone, Copy)]
pub struct Wanted {
    pub target: u32,
    pub role: u32,
    pub workers: u32,
    pub priority: i32,
    pub retries: u32,
    pub timeout_ms: i32,
    pub fuel_millions: i32,
    pub memory_kb: i32,
    /// Keys queued (what the run adds to its total).
    pub added: i64,
}

thread_local! {
    /// The tables this backend's transaction queued keys for.
    static WANTED: RefCell<Vec<Wanted>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: RefCell<bool> = const { RefCell::new(false) };
    /// This transaction changed a schedule (`dj.auto_populate(..., every)`).
    static RESCHEDULE: RefCell<bool> = const { RefCell::new(false) };
}

fn register() {
    REGISTERED.with(|r| {
        if !*r.borrow() {
            // SAFETY: a callback for the life of the backend, as extensions register them.
            unsafe { pg_sys::RegisterXactCallback(Some(at_end), std::ptr::null_mut()) };
            *r.borrow_mut() = true;
        }
    });
}

/// Asks the launcher to look at this database's schedules when this transaction commits.
pub fn reschedule() {
    if slots::available() {
        register();
        RESCHEDULE.with(|r| *r.borrow_mut() = true);
    }
}

/// Asks for `wanted`'s run to be woken when this transaction commits (nothing if it aborts).
pub fn want(wanted: Wanted) {
    if !slots::available() {
        return;
    }
    register();
    WANTED.with(|w| {
        let mut w = w.borrow_mut();
        match w.iter_mut().find(|x| x.target == wanted.target) {
            Some(x) => {
                x.added += wanted.added;
                *x = Wanted { added: x.added, ..wanted };
            }
            None => w.push(wanted),
        }
    });
}

/// At the end of each transaction: after a commit, wakes the runs of the tables it queued keys
/// for. Nothing here may raise an error (the transaction is committed already): it takes the
/// pool's lock, registers workers and sets latches, no more.
#[pg_guard]
unsafe extern "C-unwind" fn at_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            // SAFETY: this backend's database.
            let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
            let wanted = WANTED.with(|w| std::mem::take(&mut *w.borrow_mut()));
            if !wanted.is_empty() {
                wake(database, &wanted);
            }
            if RESCHEDULE.with(|r| std::mem::take(&mut *r.borrow_mut())) {
                super::launcher::reschedule(database);
            }
        }
        // (A prepared transaction's keys are taken by the next run of their table.)
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            WANTED.with(|w| w.borrow_mut().clear());
            RESCHEDULE.with(|r| *r.borrow_mut() = false);
        }
        _ => {}
    }
}

/// Wakes the auto run of each table of `wanted` in `database`, or starts one. Raises no error:
/// a table whose run cannot start (the pool is full) keeps its keys queued, with a WARNING.
pub fn wake(database: u32, wanted: &[Wanted]) {
    for w in wanted {
        let spec = spec_of(database, w);
        match slots::wake_or_create_auto(&spec, w.added, gucs::max_workers()) {
            Woken::Poked(pids) => {
                for pid in pids.into_iter().filter(|p| *p != 0) {
                    // SAFETY: the latch of a live process, looked up under ProcArrayLock.
                    unsafe {
                        let proc_ = pg_sys::BackendPidGetProc(pid);
                        if !proc_.is_null() {
                            pg_sys::SetLatch(&mut (*proc_).procLatch);
                        }
                    }
                }
            }
            Woken::Created(h, workers) => {
                let mut started = 0;
                for _ in 0..workers {
                    let registered =
                        super::worker_of(h, "datajoint worker for an auto populate").load_dynamic();
                    if registered.is_err() {
                        break;
                    }
                    started += 1;
                }
                slots::update(h, |s| {
                    s.spec.workers = started;
                    if started == 0 {
                        s.state = slots::State::Free;
                    }
                });
                if started == 0 {
                    pgrx::warning!(
                        "auto populate: no background worker could be started (max_worker_processes); \
                         the queued keys wait for the table's next run"
                    );
                }
            }
            Woken::Refused(slots::Refused::Busy) => pgrx::warning!(
                "auto populate: all {} workers of the pool are busy (dj.max_workers); the queued keys \
                 wait for the table's next run",
                gucs::max_workers()
            ),
            Woken::Refused(slots::Refused::Full) => pgrx::warning!(
                "auto populate: {} runs are under way, the most the pool holds; the queued keys wait \
                 for the table's next run",
                slots::SLOTS
            ),
        }
    }
}

/// What the auto run of `w` in `database` asks for.
pub(super) fn spec_of(database: u32, w: &Wanted) -> Spec {
    let mut spec = slots::Slot::empty().spec;
    spec.database = database;
    spec.role = w.role;
    spec.target = w.target;
    spec.workers = w.workers.clamp(1, slots::MAX_RUN_WORKERS as u32);
    spec.suppress_errors = true;
    spec.retries = w.retries;
    spec.priority = w.priority;
    spec.timeout_ms = w.timeout_ms;
    spec.fuel_millions = w.fuel_millions;
    spec.memory_kb = w.memory_kb;
    spec.auto = true;
    spec
}
