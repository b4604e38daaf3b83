//! One pool worker at work: the core's populate loop over keys taken from the job queue, each key
//! reserved in a transaction of its own (committed at once, so others see it `reserved`), then
//! made in a second transaction that also deletes its job row, as the role that asked for the run.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datajoint_core::dependencies::Table;
use datajoint_core::host::{self as core_host, Scope, Session, Statement};
use datajoint_core::make::{display_row, Row, Value};
use datajoint_core::populate::{self, queue, Class, KeyRun, Order, Progress, Settings, Stop};
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, PgSqlErrorCode};

use super::slots::{self, Handle, Slot, Spec, State};
use super::txn::{self, begin, commit, identity, run_as, transaction, transaction_as, Identity};
use crate::catalog;
use crate::error::{DjError, DjResult};
use crate::gucs;
use crate::make::source::{fresh_instance_of, make_of, source_of, Source};
use crate::make::{self as host, Failure, Plans, Run};
use crate::pipeline::writes::PipelineWrite;
use crate::pipeline::{delete, tables};
use crate::security;

/// Runs the worker's part of the run, then leaves it (the last worker ends the run).
pub fn work(h: Handle) {
    let outcome = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| run(h)))
        .catch_others(|e| Err(Failure::Caught(e)))
        .execute();
    if let Err(failure) = outcome {
        // SAFETY: ends whatever transaction the error left (SPI and snapshots with it).
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        let (code, message, ..) = failure.parts();
        pgrx::log!("datajoint worker (slot {}) stopped: {message}", h.index);
        slots::update(h, |s| {
            s.broken = true;
            // An error before the queue was filled is the run's: it fails with it.
            s.failed |= !s.ready;
            s.set_error(sqlstate(code), &message);
        });
    }
    leave(h);
}

fn sqlstate(code: PgSqlErrorCode) -> [u8; 5] {
    let mut out = *b"XX000";
    // PostgreSQL's encoding of a SQLSTATE: 6 bits per character.
    let raw = code as i32;
    for (i, c) in out.iter_mut().enumerate() {
        *c = (((raw >> (6 * i)) & 0x3f) + b'0' as i32) as u8;
    }
    out
}

/// PostgreSQL's code of a SQLSTATE's five characters.
pub fn sqlstate_code(state: [u8; 5]) -> PgSqlErrorCode {
    let raw = state
        .iter()
        .enumerate()
        .fold(0i32, |acc, (i, c)| acc | (((*c as i32 - b'0' as i32) & 0x3f) << (6 * i)));
    PgSqlErrorCode::from(raw as isize)
}

// ---------------------------------------------------------------------------------------------
// The run

fn table_of(oid: u32) -> DjResult<Table> {
    catalog::table_name_of(pg_sys::Oid::from(oid))?.ok_or_else(|| {
        DjError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "the run's table was dropped", "")
    })
}

pub(super) fn order_of(spec: &Spec) -> Order {
    match spec.order {
        1 => Order::Reverse,
        2 => Order::Random,
        _ => Order::Original,
    }
}

fn run(h: Handle) -> Result<(), Failure> {
    let Some(slot) = slots::get(h) else { return Ok(()) };
    // A pipeline's runs, its first table's included, or this run alone.
    let members: Vec<Handle> =
        if slot.members.len > 0 { slot.members.slots[..slot.members.len].to_vec() } else { vec![h] };
    let filler = slots::update(h, |s| !std::mem::replace(&mut s.filling, true)).unwrap_or(false);
    if filler {
        // In the pipeline's order (upstream first); the first run is ready once all are.
        for m in &members {
            let Some(mut member) = slots::get(*m) else { return Ok(()) };
            if member.spec.auto {
                // An auto run was started where no statement could take its id.
                let id = transaction(next_run_id)?;
                slots::update(*m, |s| s.spec.run_id = id);
                member.spec.run_id = id;
            }
            transaction(|| record_start(&member))?;
            let total = if member.spec.auto {
                transaction_as(member.spec.role, || fill_auto(&member.spec))?
            } else {
                transaction_as(member.spec.role, || fill(&member.spec, member.restriction().as_deref()))?
            };
            slots::update(*m, |s| {
                s.total = total;
                s.ready = *m != h;
                if s.state == State::Starting {
                    s.state = State::Running;
                }
            });
        }
        slots::update(h, |s| s.ready = true);
    } else {
        loop {
            match slots::get(h) {
                Some(s) if s.ready => break,
                // The first worker could not fill the queue (its error is the run's), or the
                // run was cancelled meanwhile.
                Some(s) if s.broken || s.cancel => return Ok(()),
                Some(s) if !s.state.finished() => txn::wait_a_little(10),
                _ => return Ok(()),
            }
        }
    }
    if members.len() > 1 {
        return super::pipeline::work(h, &members);
    }
    let Some(slot) = slots::get(h) else { return Ok(()) };
    let spec = slot.spec;
    let restriction = slot.restriction();
    // The run's code and statements, kept across the keys' transactions.
    begin();
    let as_role = identity(spec.role);
    let setup = Setup::new(&spec, restriction.as_deref())?;
    let _permit = PipelineWrite::of_oids("INSERT", setup.writable.clone());
    let mut pool = PoolRun::open(h, h, spec, &setup)?;
    drop(as_role);
    commit();
    let outcome = populate::run(
        &mut pool,
        Settings { total: 0, suppress_errors: true, report_every: Duration::from_secs(3600) },
    );
    pool.end(outcome)
}

/// What a run's keys are made with: its key source, the module's machine code, the session of
/// checked statements, the tables it writes (looked up as the role, in a transaction).
pub(super) struct Setup {
    pub source: Source,
    prepared: Rc<datajoint_core::make::Prepared<host::SpiHost>>,
    session: Arc<Session>,
    pub writable: Vec<pg_sys::Oid>,
    limits: datajoint_core::sandbox::Limits,
    fresh_instance: bool,
}

impl Setup {
    pub fn new(spec: &Spec, restriction: Option<&str>) -> Result<Setup, Failure> {
        let source = source_of(table_of(spec.target)?, restriction)?;
        let (_, sha256) = make_of(&source.name)?;
        let prepared = host::prepared(&sha256)?;
        let scope = Scope::of(&*catalog::dependencies()?, &source.name);
        let writable = scope.writable().iter().map(catalog::oid_of).collect::<DjResult<Vec<_>>>()?;
        let info = host::describe(&source.name)?;
        let parts = scope.parts.iter().map(host::describe).collect::<DjResult<Vec<_>>>()?;
        let session = Arc::new(Session::new(scope, info, parts, sha256));
        let limits = gucs::limits(spec.timeout_ms, spec.fuel_millions, spec.memory_kb);
        let fresh_instance = fresh_instance_of(&source.name)?;
        Ok(Setup { source, prepared, session, writable, limits, fresh_instance })
    }
}

/// Fills the queue for the run (as its role): the stale rows deleted if asked, orphaned
/// reservations back to pending, rows of keys no longer to make removed, a pending row for each
/// missing key, the run's failed keys
/// pending again. Returns the keys queued.
pub(super) fn fill(spec: &Spec, restriction: Option<&str>) -> Result<i64, Failure> {
    let source = source_of(table_of(spec.target)?, restriction)?;
    if spec.recompute_stale && host::describe(&source.name)?.has_job_version() {
        let (_, sha256) = make_of(&source.name)?;
        let scope = Scope::of(&*catalog::dependencies()?, &source.name);
        let _permit = PipelineWrite::begin("INSERT", &scope.writable())?;
        delete::delete_where(&source.name, &populate::stale_condition(&sha256))?;
    }
    tables::ensure_jobs_table(&source.name)?;
    let jobs = populate::jobs::jobs_table(&source.name);
    catalog::write_one::<i64>(&queue::release_orphans_sql(&jobs), &[])?;
    // Rows of keys that left the key source (their upstream rows deleted since they were
    // queued) or were made meanwhile go, as a refresh does: a worker must not take them.
    let all = source.keys(false, Order::Original, None);
    Spi::run(&queue::prune_sql(&jobs, &source.name, &source.key, &all, source.condition.as_deref()))?;
    let keys = source.keys(true, order_of(spec), None);
    catalog::write_one::<i64>(
        &queue::refresh_sql(&jobs, &source.key, &keys),
        &[spec.priority.into(), 0.0f64.into()],
    )?;
    Spi::run(&queue::repend_errors_sql(&jobs, &source.key, &keys))?;
    let pending =
        catalog::read_one::<i64>(&queue::pending_count_sql(&jobs, source.condition.as_deref()), &[])?
            .unwrap_or(0);
    Ok(if spec.max_calls >= 0 { pending.min(spec.max_calls) } else { pending })
}

/// A run id, from the sequence of dj._runs (the worker's own identity).
fn next_run_id() -> Result<i64, Failure> {
    let _pin = security::pin();
    Ok(catalog::write_one::<i64>("SELECT pg_catalog.nextval('dj._runs_id_seq'::pg_catalog.regclass)", &[])?
        .unwrap_or(0))
}

/// Readies the queue of an auto run (as its role): orphaned reservations back to pending, rows
/// of keys no longer to make removed. The triggers queued its keys. Returns the keys pending.
fn fill_auto(spec: &Spec) -> Result<i64, Failure> {
    let source = source_of(table_of(spec.target)?, None)?;
    tables::ensure_jobs_table(&source.name)?;
    let jobs = populate::jobs::jobs_table(&source.name);
    catalog::write_one::<i64>(&queue::release_orphans_sql(&jobs), &[])?;
    let all = source.keys(false, Order::Original, None);
    Spi::run(&queue::prune_sql(&jobs, &source.name, &source.key, &all, None))?;
    Ok(catalog::read_one::<i64>(&queue::pending_count_sql(&jobs, None), &[])?.unwrap_or(0))
}

/// The run's row in dj._runs (as the worker's own identity: only the extension writes it); runs
/// of an earlier server life, or whose workers all died, are marked interrupted.
fn record_start(slot: &Slot) -> Result<(), Failure> {
    let _pin = security::pin();
    let live: Vec<i64> =
        slots::of_this_database().iter().filter(|s| !s.state.finished()).map(|s| s.spec.run_id).collect();
    Spi::run_with_args(
        "UPDATE dj._runs SET state = 'interrupted', finished = pg_catalog.now() \
         WHERE state OPERATOR(pg_catalog.=) ANY ('{starting,running}') AND NOT (id OPERATOR(pg_catalog.=) ANY ($1))",
        &[live.into()],
    )?;
    let table = table_of(slot.spec.target)?;
    Spi::run_with_args(
        "INSERT INTO dj._runs (id, schema_name, table_name, role_name, workers, state, started, restriction, pipeline, auto) \
         VALUES ($1, $2, $3, pg_catalog.pg_get_userbyid($4), $5, 'running', pg_catalog.to_timestamp($6), $7, $8, $9)",
        &[
            slot.spec.run_id.into(),
            table.schema.as_str().into(),
            table.name.as_str().into(),
            pg_sys::Oid::from(slot.spec.role).into(),
            (slot.spec.workers as i32).into(),
            slot.started.into(),
            slot.restriction().into(),
            (slot.spec.pipeline != 0).then_some(slot.spec.pipeline).into(),
            slot.spec.auto.into(),
        ],
    )?;
    Ok(())
}

/// This worker leaves the run; the last one out ends it: remaining keys counted, dj._runs
/// written, the slot's state final. (If it dies meanwhile, its exit callback ends the run.)
fn leave(h: Handle) {
    // SAFETY: this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let last = slots::update(h, |s| {
        if let Some(p) = s.pids.iter_mut().find(|p| **p == pid) {
            *p = 0;
            s.live = s.live.saturating_sub(1);
        }
        let last = s.live == 0 && !s.state.finished() && !s.closing;
        if last {
            s.closing = true;
            s.closer = pid;
        }
        last
    });
    if last != Some(true) {
        return;
    }
    let ended = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| finish_members(h).and_then(|_| finish(h))))
        .catch_others(|e| Err(Failure::Caught(e)))
        .execute();
    if let Err(failure) = ended {
        // SAFETY: ends the transaction the error left.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        pgrx::log!(
            "datajoint worker (slot {}) could not record the run's end: {}",
            h.index,
            failure.parts().1
        );
        slots::update(h, |s| {
            if !s.state.finished() {
                s.state = final_state(s, s.remaining);
                s.finished = slots::now();
            }
        });
    }
}

/// How a run whose workers are all gone ended.
fn final_state(s: &Slot, remaining: i64) -> State {
    if s.cancel {
        State::Cancelled
    } else if s.failed {
        State::Failed
    } else if s.broken && remaining != 0 {
        State::Interrupted
    } else {
        State::Done
    }
}

/// A pipeline's runs not ended yet end as its first run does (cancelled, failed, interrupted),
/// before it.
fn finish_members(first: Handle) -> Result<(), Failure> {
    let Some(slot) = slots::get(first) else { return Ok(()) };
    for m in slot.members.slots[..slot.members.len].iter().skip(1) {
        let open = slots::update(*m, |s| {
            // (A failed key fails its own run; the tables it left undone were interrupted.)
            s.cancel |= slot.cancel;
            s.broken |= slot.broken || slot.failed || !s.membership.complete;
            !s.state.finished()
        });
        if open == Some(true) {
            finish(*m)?;
        }
    }
    Ok(())
}

pub(super) fn finish(h: Handle) -> Result<(), Failure> {
    let Some(slot) = slots::get(h) else { return Ok(()) };
    // The keys still missing (-1 if they cannot be counted: a privilege lost, a lock timeout).
    let remaining = transaction_as(slot.spec.role, || {
        Ok(host::in_subtransaction(|| {
            let source = source_of(table_of(slot.spec.target)?, slot.restriction().as_deref())?;
            source.count(true)
        })
        .unwrap_or(-1))
    })
    .unwrap_or(-1);
    let state = final_state(&slot, remaining);
    transaction(|| {
        let _pin = security::pin();
        Spi::run_with_args(
            "UPDATE dj._runs SET state = $2, finished = pg_catalog.now(), done = $3, errors = $4, \
             remaining = $5, last_error = $6, workers = $7 WHERE id OPERATOR(pg_catalog.=) $1",
            &[
                slot.spec.run_id.into(),
                state.name().into(),
                slot.done.into(),
                slot.errors.into(),
                (remaining >= 0).then_some(remaining).into(),
                slot.error().into(),
                (slot.spec.workers as i32).into(),
            ],
        )?;
        Ok(())
    })?;
    slots::update(h, |s| {
        s.remaining = remaining;
        s.state = state;
        s.finished = slots::now();
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Keys from the queue

/// A reservation: keys worth about this much time, at most `BATCH_MAX` keys, `BATCH_FIRST` before
/// any key is timed.
const BATCH_WORK: Duration = Duration::from_millis(250);
const BATCH_MAX: i64 = 1024;
const BATCH_FIRST: i64 = 4;

pub(super) struct PoolRun<'p> {
    inner: Run<'p>,
    h: Handle,
    /// The pipeline's first run (`h` itself for a run alone): its cancel or failure stops this.
    group: Handle,
    /// Visits (a pipeline's): one reservation, its keys made, then back to the pipeline's loop.
    visiting: bool,
    reserved: Option<usize>,
    spec: Spec,
    reserve: Statement,
    next_due: String,
    retry: Statement,
    release: Statement,
    host: String,
    /// The key's transaction, when one is open.
    open: Option<Identity>,
    /// Keys reserved for this worker and not yet taken up (with their earlier failed attempts).
    held: VecDeque<(Row, u32)>,
    /// The key in flight, its earlier failed attempts, and whether it was made.
    current: Option<Row>,
    attempts: u32,
    made: bool,
    /// A key failed without suppress_errors: take no more.
    stopped: bool,
    /// When the key in flight was taken up, and the time the keys made so far took (make and
    /// commit): what sizes the next reservation.
    key_started: Option<Instant>,
    keys_timed: u32,
    keys_time: Duration,
    /// An auto run: the wakes seen before the last reservation.
    seen_wakes: u64,
}

impl<'p> PoolRun<'p> {
    /// The keys of run `h` (a member of pipeline `group`, or `h` itself), made with `setup`.
    pub(super) fn open(
        h: Handle,
        group: Handle,
        spec: Spec,
        setup: &'p Setup,
    ) -> Result<PoolRun<'p>, Failure> {
        // Memory that lives as long as the run: the key contexts are reset per key.
        let inner = unsafe {
            PgMemoryContexts::TopMemoryContext.switch_to(|_| {
                Run::new(
                    setup.session.clone(),
                    &setup.prepared,
                    Rc::new(Plans::default()),
                    std::ptr::null_mut(),
                )
            })
        }?
        .for_queue()
        .with_limits(setup.limits.clone())
        .with_fresh_instances(setup.fresh_instance)
        .with_stop_check(super::stop_requested);
        Ok(Self::new(h, group, spec, inner, &setup.source))
    }

    fn new(h: Handle, group: Handle, spec: Spec, inner: Run<'p>, source: &Source) -> PoolRun<'p> {
        let jobs = inner.jobs().clone();
        let key: Vec<core_host::Column> = inner.session().target.key().into_iter().cloned().collect();
        let text = |name: &str, type_id: pg_sys::Oid| core_host::Column::parameter(name, type_id.to_u32());
        let statement =
            |sql: String, params: Vec<core_host::Column>| Statement { label: jobs.qualified(), sql, params };
        let mut retry_params = key.clone();
        retry_params.extend([text("delay", pg_sys::FLOAT8OID), text("error_message", pg_sys::TEXTOID)]);
        PoolRun {
            reserve: statement(
                queue::reserve_sql(&jobs, &source.key, source.condition.as_deref()),
                vec![
                    text("host", pg_sys::TEXTOID),
                    text("version", pg_sys::TEXTOID),
                    text("limit", pg_sys::INT8OID),
                ],
            ),
            next_due: queue::next_due_sql(&jobs, source.condition.as_deref()),
            retry: statement(queue::retry_sql(&jobs, &source.key), retry_params),
            release: statement(queue::release_sql(&jobs, &source.key), key),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
            inner,
            h,
            group,
            spec,
            open: None,
            held: VecDeque::new(),
            current: None,
            attempts: 0,
            made: false,
            stopped: false,
            visiting: false,
            reserved: None,
            key_started: None,
            keys_timed: 0,
            keys_time: Duration::ZERO,
            seen_wakes: 0,
        }
    }

    fn cancelled(&self) -> bool {
        slots::stopping(self.h) || (self.group != self.h && slots::stopping(self.group))
    }

    /// Commits the key's transaction, if one is open (its deferred triggers fired as the role).
    fn end_key(&mut self) -> Result<(), Failure> {
        if let Some(identity) = self.open.take() {
            txn::fire_deferred()?;
            drop(identity);
            commit();
            if std::mem::take(&mut self.made) {
                slots::update(self.h, |s| s.done += 1);
            }
            if let Some(started) = self.key_started.take() {
                self.keys_timed += 1;
                self.keys_time += started.elapsed();
            }
        }
        self.current = None;
        Ok(())
    }

    /// Tickets for up to `n` more keys (max_calls): how many the run still grants.
    fn take_tickets(&self, n: i64) -> i64 {
        let max = self.spec.max_calls;
        slots::update(self.h, |s| {
            let granted = if max >= 0 { n.min(max - s.taken).max(0) } else { n };
            s.taken += granted;
            granted
        })
        .unwrap_or(0)
    }

    fn return_tickets(&self, n: i64) {
        if n > 0 {
            slots::update(self.h, |s| s.taken -= n);
        }
    }

    /// How many keys to reserve at once: about [`BATCH_WORK`] of making at the pace so far (a
    /// few keys before any is timed), at most [`BATCH_MAX`], and no more than a share of what is
    /// left, so that every worker gets some to the end. Each reservation scans the queue's index
    /// from its start, over the entries of the keys taken before whose old row versions cannot be
    /// removed yet (a caller waiting for the run holds its snapshot), so fewer, larger
    /// reservations keep a long run's queue cost flat; the time bound keeps a slow make's
    /// reservations small, so a key of higher priority queued meanwhile waits at most about that.
    fn batch(&self) -> i64 {
        let left = slots::get(self.h).map_or(1, |s| s.total - s.taken);
        let share = left / (4 * i64::from(self.spec.workers.max(1)));
        let pace = match self.keys_timed {
            0 => BATCH_FIRST,
            n => (BATCH_WORK.as_secs_f64() / (self.keys_time.as_secs_f64() / f64::from(n)).max(1e-6)) as i64,
        };
        // A pipeline's visit takes what its pace allows: its table's queue grows a refresh at a
        // time, and a share of what a refresh added would make many small reservations.
        if self.visiting {
            pace.clamp(1, BATCH_MAX)
        } else {
            pace.min(share).clamp(1, BATCH_MAX)
        }
    }

    /// Reserves up to `n` keys (committed at once), each with its earlier failed attempts.
    fn reserve(&mut self, n: i64) -> Result<Vec<(Row, u32)>, Failure> {
        let (host, version) =
            (Value::Text(self.host.clone()), Value::Text(self.inner.session().version.clone()));
        let limit = Value::Int(n);
        let plans = self.inner.plans().clone();
        let statement = &self.reserve;
        let role = self.spec.role;
        transaction(|| {
            // A reservation lost in a crash only returns the key to pending: no need to wait for
            // its commit record to reach the disk. (Set outside the role's identity, whose end
            // undoes what was set in it, as a function's SET clause does.)
            txn::set_local(c"synchronous_commit", c"off");
            run_as(role, || {
                // The queue's order is its index's: with stale statistics (a jobs table analyzed
                // while nearly empty) the planner would rather sort every pending row for each batch
                // (20 ms for 50 000 rows, against 0.7 ms in index order). Set before the statement
                // runs, so any plan made for it is made under them.
                for setting in [c"enable_sort", c"enable_bitmapscan", c"enable_seqscan"] {
                    txn::set_local(setting, c"off");
                }
                let datums = host::datums(statement, &[&host, &version, &limit])?;
                let rows = plans.returning(statement, &datums)?;
                Ok(rows
                    .into_iter()
                    .map(|mut row| {
                        let attempts = match row.pop().map(|f| f.value) {
                            Some(Value::Text(m)) => queue::attempts_of(&m),
                            _ => 0,
                        };
                        (row, attempts)
                    })
                    .collect())
            })
        })
    }

    /// Puts the keys this worker holds but will not make back to pending (in the open
    /// transaction, or in one of their own).
    fn release_held(&mut self) -> Result<(), Failure> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held: Vec<Row> = self.held.drain(..).map(|(key, _)| key).collect();
        self.return_tickets(held.len() as i64);
        let (inner, release) = (&self.inner, &self.release);
        let release_all = || {
            for key in &held {
                let args = inner.session().key_values(key);
                let datums = host::datums(release, &args)?;
                inner.plans().execute(release, &datums)?;
            }
            Ok(())
        };
        if self.open.is_some() {
            release_all()
        } else {
            transaction_as(self.spec.role, release_all)
        }
    }

    /// An auto run's worker with nothing to take: waits until a commit queues keys for the run
    /// (it sets this worker's latch), a failed key's retry falls due, or the idle timeout passes
    /// (then it leaves, unless woken meanwhile). Whether there may be keys to take.
    fn wait_for_keys(&mut self) -> Result<bool, Failure> {
        let idle = gucs::worker_idle_timeout();
        let started = Instant::now();
        let retry = self.next_due()?.map(|due| Duration::from_secs_f64(due.max(0.0)));
        loop {
            if self.cancelled() {
                return Ok(false);
            }
            if slots::wakes(self.h) != self.seen_wakes || retry.is_some_and(|due| started.elapsed() >= due) {
                return Ok(true);
            }
            let waited = started.elapsed();
            if waited >= idle {
                return Ok(!slots::retire_unless_woken(self.h, self.seen_wakes));
            }
            let left = (idle - waited).min(retry.map_or(Duration::MAX, |due| due.saturating_sub(waited)));
            txn::wait_a_little(left.as_millis().clamp(1, 1000) as i64);
        }
    }

    /// Seconds until the run's next scheduled key is due, if any is.
    pub(super) fn next_due(&self) -> Result<Option<f64>, Failure> {
        let sql = &self.next_due;
        transaction_as(self.spec.role, || Ok(catalog::write_one::<f64>(sql, &[])?))
    }

    /// The end of a run alone (see [`Self::settle`]).
    fn end(mut self, outcome: Result<populate::Summary, Stop<Failure>>) -> Result<(), Failure> {
        self.settle(outcome).map(|_| ())
    }

    /// One visit of a pipeline's worker: one reservation (of a batch sized as [`Self::batch`]
    /// says) and its keys made. How many keys it reserved, or None when this worker must stop.
    pub(super) fn visit(&mut self) -> Result<Option<usize>, Failure> {
        self.visiting = true;
        self.reserved = None;
        let outcome = populate::run(
            self,
            Settings { total: 0, suppress_errors: true, report_every: Duration::from_secs(3600) },
        );
        let go_on = self.settle(outcome)?;
        Ok(go_on.then(|| self.reserved.unwrap_or(0)))
    }

    /// After the loop (or a visit): the key in flight of a stopped worker, and the keys it held,
    /// go back to pending; the transaction ends. Whether the worker may go on.
    fn settle(&mut self, outcome: Result<populate::Summary, Stop<Failure>>) -> Result<bool, Failure> {
        match outcome {
            Ok(_) => {
                self.end_key()?;
                self.release_held()?;
                Ok(true)
            }
            Err(Stop::Error(error)) | Err(Stop::KeyFailed { error, .. }) => {
                self.release_held()?;
                if let (Some(key), true) = (self.current.clone(), self.open.is_some()) {
                    let args = self.inner.session().key_values(&key);
                    let datums = host::datums(&self.release, &args)?;
                    self.inner.plans().execute(&self.release, &datums)?;
                }
                self.made = false;
                self.end_key()?;
                if !self.cancelled() {
                    // This worker alone was stopped (pg_cancel_backend) or could not go on.
                    let (code, message, ..) = error.parts();
                    for h in [self.h, self.group] {
                        slots::update(h, |s| {
                            s.broken = true;
                            s.set_error(sqlstate(code), &message);
                        });
                    }
                }
                Ok(false)
            }
        }
    }
}

impl KeyRun for PoolRun<'_> {
    type Error = Failure;

    fn next_batch(&mut self) -> Result<Vec<Row>, Failure> {
        self.end_key()?;
        loop {
            if self.stopped || self.cancelled() {
                self.release_held()?;
                return Ok(Vec::new());
            }
            if self.held.is_empty() && self.visiting && self.reserved.is_some() {
                return Ok(Vec::new());
            }
            if self.held.is_empty() {
                let granted = self.take_tickets(self.batch());
                if granted == 0 {
                    return Ok(Vec::new());
                }
                if self.spec.auto {
                    self.seen_wakes = slots::wakes(self.h);
                }
                let got = self.reserve(granted)?;
                self.return_tickets(granted - got.len() as i64);
                self.reserved = Some(got.len());
                self.held.extend(got);
            }
            if let Some((key, attempts)) = self.held.pop_front() {
                self.key_started = Some(Instant::now());
                begin();
                self.open = Some(identity(self.spec.role));
                self.current = Some(key.clone());
                self.attempts = attempts;
                return Ok(vec![key]);
            }
            if self.visiting {
                return Ok(Vec::new());
            }
            if self.spec.auto {
                // Nothing queued: wait for more keys, or leave.
                if self.wait_for_keys()? {
                    continue;
                }
                return Ok(Vec::new());
            }
            // Nothing due now: wait for a key due within the idle timeout (a retry), or end.
            let idle = gucs::worker_idle_timeout().as_secs_f64();
            match self.next_due()? {
                Some(due) if due <= idle => txn::wait_a_little(((due * 1000.0) as i64).clamp(10, 500)),
                _ => return Ok(Vec::new()),
            }
        }
    }

    fn check_interrupts(&mut self) {
        pgrx::check_for_interrupts!();
    }

    fn claim(&mut self, _key: &Row) -> bool {
        true
    }

    fn make(&mut self, key: &Row) -> Result<(), Failure> {
        txn::show(&format!("populate {} key ({})", self.inner.target(), display_row(key)));
        let result = self.inner.make(key);
        self.made = result.is_ok();
        result
    }

    fn class(&self, error: &Failure) -> Class {
        if self.cancelled() {
            Class::Cancel
        } else {
            self.inner.class(error)
        }
    }

    fn message(&self, error: &Failure) -> String {
        self.inner.message(error)
    }

    fn made_meanwhile(&mut self, key: &Row) -> Result<bool, Failure> {
        let made = self.inner.made_meanwhile(key)?;
        if made {
            self.inner.clear_job(key)?;
        }
        Ok(made)
    }

    fn record_failure(&mut self, key: &Row, error: &Failure, took: Duration) -> Result<(), Failure> {
        let attempt = self.attempts + 1;
        let (code, message, ..) = error.parts();
        if attempt <= self.spec.retries {
            let mut args = self.inner.session().key_values(key);
            let delay = Value::Float(queue::retry_delay(attempt));
            let text =
                Value::Text(queue::retry_message(attempt, self.spec.retries, &message.replace('\0', "\\0")));
            args.extend([&delay, &text]);
            let datums = host::datums(&self.retry, &args)?;
            self.inner.plans().execute(&self.retry, &datums)?;
            // A retry is the same key again: it takes no more of max_calls.
            self.return_tickets(1);
            return Ok(());
        }
        self.inner.record_failure(key, error, took)?;
        let text =
            format!("make of {} failed for key ({}): {message}", self.inner.target(), display_row(key));
        let stop = !self.spec.suppress_errors;
        slots::update(self.h, |s| {
            s.errors += 1;
            s.set_error(sqlstate(code), &text);
            s.failed |= stop;
        });
        if stop && self.group != self.h {
            // A pipeline stops at its first failed key, as a run alone does.
            slots::update(self.group, |s| {
                s.set_error(sqlstate(code), &text);
                s.failed = true;
            });
        }
        self.stopped |= stop;
        Ok(())
    }

    fn report(&mut self, _progress: &Progress) {}
}
