//! The runs of the worker pool in shared memory: what each run asked for (so its workers need not
//! see the caller's uncommitted transaction), its workers, its counters and its outcome. A caller
//! waiting on its run and `dj.runs` read them here; `dj._runs` keeps what outlives the server.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// Runs the pool holds at once (a finished run's slot is reused).
pub const SLOTS: usize = 32;
/// Workers one run may have.
pub const MAX_RUN_WORKERS: usize = 16;
/// Tables one pipeline run (`dj.populate_all`) populates.
pub const MAX_MEMBERS: usize = 16;
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
    /// The pipeline run (`dj.populate_all`) this table's run belongs to: its first table's run
    /// id (0: none). A member other than the first has no workers of its own: the pipeline's
    /// work on every member.
    pub pipeline: i64,
    pub member: bool,
    /// A run of an auto-populated table (`dj.auto_populate`): its first worker takes a run id
    /// and queues nothing (the triggers did); its workers wait for more keys until the idle
    /// timeout passes without any.
    pub auto: bool,
}

/// The tables of a pipeline run, in its first table's slot: each member's slot, and which members
/// are upstream of it (bit j: member j).
#[derive(Clone, Copy)]
pub struct Members {
    pub len: usize,
    pub slots: [Handle; MAX_MEMBERS],
    pub upstream: [u16; MAX_MEMBERS],
}

/// Where a pipeline member stands: workers taking keys of it now; done (its queue is empty and
/// every table upstream of it done too); its queue being refreshed, how many keys its upstream
/// members had made at the last refresh (and when), and how many refreshes there were.
#[derive(Clone, Copy, Default)]
pub struct Membership {
    pub busy: u32,
    pub complete: bool,
    pub refreshing: bool,
    pub refreshed: i64,
    pub refreshed_at: f64,
    /// Seconds the last refresh took.
    pub refresh_took: f64,
    pub refreshes: u64,
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
    pub members: Members,
    pub membership: Membership,
    /// An auto run: how many times committed writes queued keys for it, and how many of its
    /// workers left for want of keys (it takes no more wakes once all did).
    pub wakes: u64,
    pub retired: u32,
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
    pub fn empty() -> Slot {
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
            pipeline: 0,
            member: false,
            auto: false,
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
            members: Members {
                len: 0,
                slots: [Handle { index: 0, generation: 0 }; MAX_MEMBERS],
                upstream: [0; MAX_MEMBERS],
            },
            membership: Membership::default(),
            wakes: 0,
            retired: 0,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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

/// Takes a slot for each of `specs` under one lock, with as many of the first one's workers as
/// dj.max_workers (`max`) has left over the unfinished runs (checked and reserved under the same
/// lock; granted in each slot's `spec.workers`). The first one's workers work for all of them; with more than one, the first slot lists the others as its
/// members, with `upstream` (bit j of member i: member j is upstream of it). Returns the slots
/// and a copy of the first.
pub fn create_group(specs: &[Spec], upstream: &[u16], max: u32) -> Result<(Vec<Handle>, Slot), Refused> {
    create_in(&mut RUNS.exclusive(), specs, upstream, max)
}

fn create_in(
    runs: &mut Runs,
    specs: &[Spec],
    upstream: &[u16],
    max: u32,
) -> Result<(Vec<Handle>, Slot), Refused> {
    let busy: u32 = runs
        .slots
        .iter()
        .filter(|s| s.state != State::Free && !s.state.finished() && !s.spec.member)
        .map(|s| s.spec.workers)
        .sum();
    let n = specs[0].workers.min(max.saturating_sub(busy));
    if n == 0 {
        return Err(Refused::Busy);
    }
    let mut indexes: Vec<usize> =
        runs.slots.iter().enumerate().filter(|(_, s)| s.state == State::Free).map(|(i, _)| i).collect();
    // Then the finished runs that ended longest ago give their slots (dj._runs keeps them).
    let mut finished: Vec<(usize, f64)> = runs
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state.finished() && s.live == 0)
        .map(|(i, s)| (i, s.finished))
        .collect();
    finished.sort_by(|a, b| a.1.total_cmp(&b.1));
    indexes.extend(finished.into_iter().map(|(i, _)| i));
    if indexes.len() < specs.len() {
        return Err(Refused::Full);
    }
    let mut handles = Vec::with_capacity(specs.len());
    for (spec, &index) in specs.iter().zip(&indexes) {
        runs.next_generation += 1;
        let mut slot = Slot::empty();
        slot.generation = runs.next_generation;
        slot.state = State::Starting;
        slot.spec = *spec;
        slot.spec.workers = n;
        slot.started = now();
        runs.slots[index] = slot;
        handles.push(Handle { index, generation: slot.generation });
    }
    if specs.len() > 1 {
        let first = &mut runs.slots[handles[0].index];
        first.members.len = handles.len();
        first.members.slots[..handles.len()].copy_from_slice(&handles);
        first.members.upstream[..handles.len()].copy_from_slice(upstream);
    }
    Ok((handles, runs.slots[indexes[0]]))
}

/// What [`wake_or_create_auto`] did.
pub enum Woken {
    /// The table's auto run was woken: its workers' pids (0: none), whose latches to set.
    Poked([i32; MAX_RUN_WORKERS]),
    /// A new auto run took this slot, with this many workers to start.
    Created(Handle, u32),
    Refused(Refused),
}

/// Under one lock: wakes the unfinished auto run of `spec`'s table and database that still takes
/// wakes (adding `added` keys to its total), or creates one.
pub fn wake_or_create_auto(spec: &Spec, added: i64, max: u32) -> Woken {
    let mut runs = RUNS.exclusive();
    let live = runs.slots.iter_mut().find(|s| {
        s.state != State::Free
            && !s.state.finished()
            && s.spec.auto
            && s.spec.database == spec.database
            && s.spec.target == spec.target
            && !s.closing
            && !s.cancel
            && s.retired < s.spec.workers
    });
    if let Some(s) = live {
        s.wakes += 1;
        s.total += added;
        return Woken::Poked(s.pids);
    }
    match create_in(&mut runs, &[*spec], &[0], max) {
        Ok((handles, slot)) => Woken::Created(handles[0], slot.spec.workers),
        Err(refused) => Woken::Refused(refused),
    }
}

/// How many times the auto run was woken.
pub fn wakes(h: Handle) -> u64 {
    let runs = RUNS.share();
    runs.slots.get(h.index).filter(|s| s.generation == h.generation).map_or(0, |s| s.wakes)
}

/// An idle worker of an auto run leaves unless the run was woken since it saw `seen` wakes
/// (under the lock the wakers take): whether it may leave.
pub fn retire_unless_woken(h: Handle, seen: u64) -> bool {
    update(h, |s| {
        let unwoken = s.wakes == seen;
        if unwoken {
            s.retired += 1;
        }
        unwoken
    })
    .unwrap_or(true)
}

/// A copy of slot `index`, whatever it holds.
pub fn get_any(index: usize) -> Option<Slot> {
    RUNS.share().slots.get(index).copied()
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
        .find(|(_, s)| {
            run_id != 0 && s.spec.run_id == run_id && s.spec.database == database && s.state != State::Free
        })
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

/// After the workers of a pipeline died (see the worker's exit callback): its runs still open end
/// as its first one ended.
pub fn end_members(h: Handle) {
    let mut runs = RUNS.exclusive();
    let Some(first) = runs.slots.get(h.index).copied().filter(|s| s.generation == h.generation) else {
        return;
    };
    if !first.state.finished() {
        return;
    }
    for m in first.members.slots.iter().take(first.members.len).skip(1) {
        let s = &mut runs.slots[m.index];
        if s.generation == m.generation && s.state != State::Free && !s.state.finished() {
            s.state = if first.cancel { State::Cancelled } else { State::Interrupted };
            s.finished = now();
        }
    }
}

/// A pipeline's members as one lock saw them: each one's keys made and membership.
pub fn memberships(members: &[Handle]) -> Vec<(i64, Membership)> {
    let runs = RUNS.share();
    members
        .iter()
        .map(|m| match runs.slots.get(m.index) {
            Some(s) if s.generation == m.generation => (s.done, s.membership),
            // Gone (cannot happen while the pipeline's workers live): nothing left to wait for.
            _ => (0, Membership { complete: true, ..Membership::default() }),
        })
        .collect()
}
