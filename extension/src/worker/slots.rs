//! The runs of the worker pool in shared memory: what each run asked for (so its workers need not
//! see the caller's uncommitted transaction), its workers, its counters and its outcome. A caller
//! waiting on its run and `dj.runs` read them here; `dj._runs` keeps what outlives the server.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// Runs the pool holds at once (a finished run's slot is reused).
pub const SLOTS: usize = 32;
/// Workers one run may have.
pub const MAX_RUN_WORKERS: usize = 16;
/// Bytes of a run's restriction (its checked text).
pub const RESTRICTION_BYTES: usize = 4096;
const ERROR_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Free = 0,
    /// Workers are starting; the first one fills the queue.
    Starting,
    Running,
    Done,
    /// A key failed (without suppress_errors), or a worker could not go on.
    Failed,
    Cancelled,
    /// Its workers ended without finishing (terminated).
    Interrupted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Free => "free",
            State::Starting => "starting",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Interrupted => "interrupted",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled | State::Interrupted)
    }
}

/// What a run asks for, as the caller resolved it.
#[derive(Clone, Copy)]
pub struct Spec {
    pub run_id: i64,
    pub database: u32,
    pub role: u32,
    pub target: u32,
    pub workers: u32,
    pub max_calls: i64,
    pub suppress_errors: bool,
    /// Delete the rows made by another version of the make first (the first worker does).
    pub recompute_stale: bool,
    pub order: u8,
    pub retries: u32,
    pub priority: i32,
    pub timeout_ms: i32,
    pub fuel_millions: i32,
    pub memory_kb: i32,
    pub restriction_len: usize,
    pub restriction: [u8; RESTRICTION_BYTES],
}

#[derive(Clone, Copy)]
pub struct Slot {
    /// Which run of the slot's life this is (see [`Handle`]).
    pub generation: u64,
    pub state: State,
    pub spec: Spec,
    /// Unix seconds (float) when the run started and finished.
    pub started: f64,
    pub finished: f64,
    pub pids: [i32; MAX_RUN_WORKERS],
    /// Workers started and not yet gone.
    pub live: u32,
    /// The first worker took the job of filling the queue; it is filled.
    pub filling: bool,
    pub ready: bool,
    /// Its last worker is ending it: no worker may join. `closer` is that worker's pid.
    pub closing: bool,
    pub closer: i32,
    pub cancel: bool,
    /// A key failed without suppress_errors: no worker takes another key.
    pub failed: bool,
    /// A worker ended before the queue was empty (its own cancel, or an error it could not record).
    pub broken: bool,
    /// Keys taken (for max_calls), made, failed; keys queued when the run started; keys missing
    /// when it ended (-1: not counted).
    pub taken: i64,
    pub done: i64,
    pub errors: i64,
    pub total: i64,
    pub remaining: i64,
    /// The error that ended the run, or the last failure: SQLSTATE (5 bytes) and text.
    pub sqlstate: [u8; 5],
    pub error_len: usize,
    pub error: [u8; ERROR_BYTES],
}

#[derive(Clone, Copy)]
pub struct Runs {
    pub slots: [Slot; SLOTS],
    pub next_generation: u64,
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Runs {}

impl Default for Runs {
    fn default() -> Self {
        Runs { slots: [Slot::empty(); SLOTS], next_generation: 0 }
    }
}

impl Slot {
    fn empty() -> Slot {
        let spec = Spec {
            run_id: 0,
            database: 0,
            role: 0,
            target: 0,
            workers: 0,
            max_calls: -1,
            suppress_errors: false,
            recompute_stale: false,
            order: 0,
            retries: 0,
            priority: 5,
            timeout_ms: 0,
            fuel_millions: 0,
            memory_kb: 0,
            restriction_len: 0,
            restriction: [0; RESTRICTION_BYTES],
        };
        let slot = Slot {
            generation: 0,
            state: State::Free,
            spec,
            started: 0.0,
            finished: 0.0,
            pids: [0; MAX_RUN_WORKERS],
            live: 0,
            filling: false,
            ready: false,
            closing: false,
            closer: 0,
            cancel: false,
            failed: false,
            broken: false,
            taken: 0,
            done: 0,
            errors: 0,
            total: 0,
            remaining: -1,
            sqlstate: *b"00000",
            error_len: 0,
            error: [0; ERROR_BYTES],
        };
        slot
    }
}

pub static RUNS: PgLwLock<Runs> = unsafe { PgLwLock::new(c"datajoint runs") };

/// Whether shared memory was set up (the library was preloaded).
static mut INITIALIZED: bool = false;

/// From `_PG_init`, while the postmaster loads preload libraries.
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(RUNS);
    // SAFETY: set once, at load, before any backend forks.
    unsafe { INITIALIZED = true };
}

pub fn available() -> bool {
    // SAFETY: written only at load.
    unsafe { INITIALIZED }
}

impl Slot {
    pub fn restriction(&self) -> Option<String> {
        (self.spec.restriction_len > 0).then(|| {
            String::from_utf8_lossy(&self.spec.restriction[..self.spec.restriction_len]).into_owned()
        })
    }

    pub fn error(&self) -> Option<String> {
        (self.error_len > 0).then(|| String::from_utf8_lossy(&self.error[..self.error_len]).into_owned())
    }

    pub fn set_error(&mut self, sqlstate: [u8; 5], message: &str) {
        let mut n = message.len().min(ERROR_BYTES);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        self.error[..n].copy_from_slice(&message.as_bytes()[..n]);
        self.error_len = n;
        self.sqlstate = sqlstate;
    }
}

/// Now, in Unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A run's slot: its index and the generation the slot had when the run took it (run ids are
/// per database; generations are unique in the server's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle {
    pub index: usize,
    pub generation: u64,
}

/// Why no slot was given.
pub enum Refused {
    /// Every one of dj.max_workers is taken by unfinished runs.
    Busy,
    /// Every slot holds an unfinished run.
    Full,
}

/// Takes a slot for `spec`, with as many of its workers as dj.max_workers (`max`) has left over
/// the unfinished runs (checked and reserved under one lock). The workers granted are in the
/// slot's `spec.workers`.
pub fn create(spec: Spec, max: u32) -> Result<(Handle, Slot), Refused> {
    let mut runs = RUNS.exclusive();
    let busy: u32 = runs
        .slots
        .iter()
        .filter(|s| s.state != State::Free && !s.state.finished())
        .map(|s| s.spec.workers)
        .sum();
    let n = spec.workers.min(max.saturating_sub(busy));
    if n == 0 {
        return Err(Refused::Busy);
    }
    let index = runs
        .slots
        .iter()
        .position(|s| s.state == State::Free)
        .or_else(|| {
            // The finished run that ended longest ago gives its slot (dj._runs keeps it).
            runs.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state.finished() && s.live == 0)
                .min_by(|a, b| a.1.finished.total_cmp(&b.1.finished))
                .map(|(i, _)| i)
        })
        .ok_or(Refused::Full)?;
    runs.next_generation += 1;
    let mut slot = Slot::empty();
    slot.generation = runs.next_generation;
    slot.state = State::Starting;
    slot.spec = spec;
    slot.spec.workers = n;
    slot.started = now();
    runs.slots[index] = slot;
    Ok((Handle { index, generation: slot.generation }, slot))
}

/// A copy of the run's slot, while it holds the run.
pub fn get(h: Handle) -> Option<Slot> {
    let runs = RUNS.share();
    let slot = runs.slots.get(h.index)?;
    (slot.generation == h.generation && slot.state != State::Free).then(|| *slot)
}

/// Whether the run was cancelled or failed (or is gone): read without copying the slot, as the
/// guest's epoch check does.
pub fn stopping(h: Handle) -> bool {
    let runs = RUNS.share();
    runs.slots
        .get(h.index)
        .is_none_or(|s| s.generation != h.generation || s.state == State::Free || s.cancel || s.failed)
}

/// The run `run_id` of this database (run ids are per database), if a slot holds it.
pub fn find(run_id: i64) -> Option<(Handle, Slot)> {
    // SAFETY: this backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let runs = RUNS.share();
    runs.slots
        .iter()
        .enumerate()
        .find(|(_, s)| s.spec.run_id == run_id && s.spec.database == database && s.state != State::Free)
        .map(|(i, s)| (Handle { index: i, generation: s.generation }, *s))
}

/// Every slot in use by runs of this database.
pub fn of_this_database() -> Vec<Slot> {
    // SAFETY: this backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    RUNS.share()
        .slots
        .iter()
        .filter(|s| s.state != State::Free && s.spec.database == database)
        .copied()
        .collect()
}

/// Changes the run's slot, while it holds the run; returns what `f` returned.
pub fn update<T>(h: Handle, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
    let mut runs = RUNS.exclusive();
    let slot = runs.slots.get_mut(h.index)?;
    (slot.generation == h.generation && slot.state != State::Free).then(|| f(slot))
}
