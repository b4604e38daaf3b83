//! One pool worker at work: the core's populate loop over keys taken from the job queue, each key
//! reserved in a transaction of its own (committed at once, so others see it `reserved`), then
//! made in a second transaction that also deletes its job row, as the role that asked for the run.

use std::ffi::CString;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use datajoint_core::dependencies::Table;
use datajoint_core::host::{self as core_host, Scope, Session, Statement};
use datajoint_core::make::{display_row, Row, Value};
use datajoint_core::populate::{self, queue, Class, KeyRun, Order, Progress, Settings, Stop};
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, PgSqlErrorCode};

use super::slots::{self, Spec, State};
use crate::catalog;
use crate::error::{DjError, DjResult};
use crate::gucs;
use crate::make::source::{make_of, source_of, Source};
use crate::make::{self as host, Failure, Plans, Run};
use crate::pipeline::tables;
use crate::pipeline::writes::PipelineWrite;
use crate::security::{self, Pinned};

/// Runs the worker's part of run `run_id`, then leaves it (the last worker ends the run).
pub fn work(index: usize, run_id: i64) {
    let outcome = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| run(index, run_id)))
        .catch_others(|e| Err(Failure::Caught(e)))
        .execute();
    if let Err(failure) = outcome {
        // SAFETY: ends whatever transaction the error left (SPI and snapshots with it).
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        let (code, message, ..) = failure.parts();
        pgrx::log!("datajoint worker for run {run_id} stopped: {message}");
        slots::update(index, run_id, |s| {
            s.broken = true;
            s.set_error(sqlstate(code), &message);
        });
    }
    leave(index, run_id);
}

fn sqlstate(code: PgSqlErrorCode) -> [u8; 5] {
    let mut out = *b"XX000";
    // SAFETY: unpacks PostgreSQL's encoding of a SQLSTATE (6 bits per character).
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
// Transactions and identity

/// Starts a transaction with SPI connected and a snapshot.
fn begin() {
    // SAFETY: a worker between transactions, as PostgreSQL's own workers start one.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::SPI_connect();
    }
}

/// Commits the transaction [`begin`] started.
fn commit() {
    // SAFETY: pairs with `begin`.
    unsafe {
        pg_sys::SPI_finish();
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
}

/// Runs `f` in a transaction of its own, committed when it returns Ok.
fn transaction<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
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
struct AsRole(pg_sys::Oid, i32);

fn as_role(role: u32) -> AsRole {
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
struct Identity {
    _pin: Pinned,
    _role: AsRole,
}

fn identity(role: u32) -> Identity {
    let _role = as_role(role);
    Identity { _pin: security::pin(), _role }
}

fn set_local(name: &std::ffi::CStr, value: &std::ffi::CStr) {
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
fn show(activity: &str) {
    let text = CString::new(activity.replace('\0', "")).unwrap_or_default();
    // SAFETY: both copy the string.
    unsafe {
        pg_sys::set_ps_display(text.as_ptr());
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr());
    }
}

fn wait_a_little(ms: i64) {
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

// ---------------------------------------------------------------------------------------------
// The run

fn table_of(oid: u32) -> DjResult<Table> {
    catalog::table_name_of(pg_sys::Oid::from(oid))?.ok_or_else(|| {
        DjError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "the run's table was dropped", "")
    })
}

fn order_of(spec: &Spec) -> Order {
    match spec.order {
        1 => Order::Reverse,
        2 => Order::Random,
        _ => Order::Original,
    }
}

fn run(index: usize, run_id: i64) -> Result<(), Failure> {
    let Some(slot) = slots::get(index, run_id) else { return Ok(()) };
    let spec = slot.spec;
    let restriction = slot.restriction();
    let filler = slots::update(index, run_id, |s| !std::mem::replace(&mut s.filling, true)).unwrap_or(false);
    if filler {
        let total = transaction(|| {
            record_start(index, run_id)?;
            let _as = identity(spec.role);
            fill(&spec, restriction.as_deref())
        })?;
        slots::update(index, run_id, |s| {
            s.total = total;
            s.ready = true;
            if s.state == State::Starting {
                s.state = State::Running;
            }
        });
    } else {
        loop {
            match slots::get(index, run_id) {
                Some(s) if s.ready => break,
                // The first worker could not fill the queue (its error is the run's), or the
                // run was cancelled meanwhile.
                Some(s) if s.broken || s.cancel => return Ok(()),
                Some(s) if !s.state.finished() => wait_a_little(10),
                _ => return Ok(()),
            }
        }
    }
    // The run's code and statements, kept across the keys' transactions.
    begin();
    let _as = identity(spec.role);
    let source = source_of(table_of(spec.target)?, restriction.as_deref())?;
    let (_, sha256) = make_of(&source.name)?;
    let prepared = host::prepared(&sha256)?;
    let scope = Scope::of(&*catalog::dependencies()?, &source.name);
    let _permit = PipelineWrite::begin("INSERT", &scope.writable())?;
    let info = host::describe(&source.name)?;
    let parts = scope.parts.iter().map(host::describe).collect::<DjResult<Vec<_>>>()?;
    let session = Arc::new(Session::new(scope, info, parts, sha256));
    let limits = gucs::limits(spec.timeout_ms, spec.fuel_millions, spec.memory_kb);
    // Memory that lives as long as the run: the key contexts are reset per key.
    let inner = unsafe {
        PgMemoryContexts::TopMemoryContext
            .switch_to(|_| Run::new(session, &prepared, Rc::new(Plans::default()), std::ptr::null_mut()))
    }?
    .for_queue()
    .with_limits(limits)
    .with_stop_check(super::stop_requested);
    drop(_as);
    commit();
    let mut pool = PoolRun::new(index, run_id, spec, inner, &source);
    let outcome = populate::run(
        &mut pool,
        Settings { total: 0, suppress_errors: true, report_every: Duration::from_secs(3600) },
    );
    pool.end(outcome)
}

/// Fills the queue for the run (as its role): orphaned reservations back to pending, a pending
/// row for each missing key, the run's failed keys pending again. Returns the keys queued.
fn fill(spec: &Spec, restriction: Option<&str>) -> Result<i64, Failure> {
    let source = source_of(table_of(spec.target)?, restriction)?;
    tables::ensure_jobs_table(&source.name)?;
    let jobs = populate::jobs::jobs_table(&source.name);
    catalog::write_one::<i64>(&queue::release_orphans_sql(&jobs), &[])?;
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

/// The run's row in dj._runs (as the worker's own identity: only the extension writes it); runs
/// of an earlier server life, or whose workers all died, are marked interrupted.
fn record_start(index: usize, run_id: i64) -> Result<(), Failure> {
    let _pin = security::pin();
    let Some(slot) = slots::get(index, run_id) else { return Ok(()) };
    let live: Vec<i64> =
        slots::of_this_database().iter().filter(|s| !s.state.finished()).map(|s| s.spec.run_id).collect();
    Spi::run_with_args(
        "UPDATE dj._runs SET state = 'interrupted', finished = pg_catalog.now() \
         WHERE state OPERATOR(pg_catalog.=) ANY ('{starting,running}') AND NOT (id OPERATOR(pg_catalog.=) ANY ($1))",
        &[live.into()],
    )?;
    let table = table_of(slot.spec.target)?;
    Spi::run_with_args(
        "INSERT INTO dj._runs (id, schema_name, table_name, role_name, workers, state, started, restriction) \
         VALUES ($1, $2, $3, pg_catalog.pg_get_userbyid($4), $5, 'running', \
                 pg_catalog.to_timestamp($6), $7)",
        &[
            run_id.into(),
            table.schema.as_str().into(),
            table.name.as_str().into(),
            pg_sys::Oid::from(slot.spec.role).into(),
            (slot.spec.workers as i32).into(),
            slot.started.into(),
            slot.restriction().into(),
        ],
    )?;
    Ok(())
}

/// This worker leaves the run; the last one out ends it: remaining keys counted, dj._runs
/// written, the slot's state final.
fn leave(index: usize, run_id: i64) {
    // SAFETY: this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let last = slots::update(index, run_id, |s| {
        if let Some(p) = s.pids.iter_mut().find(|p| **p == pid) {
            *p = 0;
            s.live = s.live.saturating_sub(1);
        }
        s.closing |= s.live == 0;
        s.live == 0 && !s.state.finished()
    });
    if last != Some(true) {
        return;
    }
    let ended = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| finish(index, run_id)))
        .catch_others(|e| Err(Failure::Caught(e)))
        .execute();
    if let Err(failure) = ended {
        // SAFETY: ends the transaction the error left.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        pgrx::log!("datajoint worker for run {run_id} could not record the run's end: {}", failure.parts().1);
    }
    slots::update(index, run_id, |s| {
        if !s.state.finished() {
            s.state = final_state(s);
        }
        s.finished = slots::now();
    });
}

fn final_state(s: &slots::Slot) -> State {
    if s.cancel {
        State::Cancelled
    } else if s.failed {
        State::Failed
    } else if s.broken {
        State::Interrupted
    } else {
        State::Done
    }
}

fn finish(index: usize, run_id: i64) -> Result<(), Failure> {
    let Some(slot) = slots::get(index, run_id) else { return Ok(()) };
    let remaining = transaction(|| {
        let _as = identity(slot.spec.role);
        let source = source_of(table_of(slot.spec.target)?, slot.restriction().as_deref())?;
        Ok(source.count(true)?)
    })
    .unwrap_or(-1);
    let state = final_state(&slot);
    transaction(|| {
        let _pin = security::pin();
        Spi::run_with_args(
            "UPDATE dj._runs SET state = $2, finished = pg_catalog.now(), done = $3, errors = $4, \
             remaining = $5, last_error = $6, workers = $7 WHERE id OPERATOR(pg_catalog.=) $1",
            &[
                run_id.into(),
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
    slots::update(index, run_id, |s| {
        s.remaining = remaining;
        s.state = state;
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Keys from the queue

struct PoolRun<'p> {
    inner: Run<'p>,
    index: usize,
    run_id: i64,
    spec: Spec,
    reserve: Statement,
    next_due: String,
    retry: Statement,
    release: Statement,
    host: String,
    /// The key's transaction, when one is open.
    open: Option<Identity>,
    /// The key in flight, its earlier failed attempts, and whether it was made.
    current: Option<Row>,
    attempts: u32,
    made: bool,
    /// A key failed without suppress_errors: take no more.
    stopped: bool,
}

impl<'p> PoolRun<'p> {
    fn new(index: usize, run_id: i64, spec: Spec, inner: Run<'p>, source: &Source) -> PoolRun<'p> {
        let jobs = inner.jobs().clone();
        let key: Vec<core_host::Column> = inner.session().target.key().into_iter().cloned().collect();
        let text = |name: &str, type_id: pg_sys::Oid| core_host::Column {
            name: name.into(),
            type_name: String::new(),
            type_id: type_id.to_u32(),
            in_key: false,
        };
        let statement =
            |sql: String, params: Vec<core_host::Column>| Statement { label: jobs.qualified(), sql, params };
        let mut retry_params = key.clone();
        retry_params.extend([text("delay", pg_sys::FLOAT8OID), text("error_message", pg_sys::TEXTOID)]);
        PoolRun {
            reserve: statement(
                queue::reserve_sql(&jobs, &source.key, source.condition.as_deref()),
                vec![text("host", pg_sys::TEXTOID), text("version", pg_sys::TEXTOID)],
            ),
            next_due: queue::next_due_sql(&jobs, source.condition.as_deref()),
            retry: statement(queue::retry_sql(&jobs, &source.key), retry_params),
            release: statement(queue::release_sql(&jobs, &source.key), key),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
            inner,
            index,
            run_id,
            spec,
            open: None,
            current: None,
            attempts: 0,
            made: false,
            stopped: false,
        }
    }

    fn cancelled(&self) -> bool {
        slots::get(self.index, self.run_id).is_none_or(|s| s.cancel || s.failed)
    }

    /// Commits the key's transaction, if one is open.
    fn end_key(&mut self) {
        if let Some(identity) = self.open.take() {
            drop(identity);
            commit();
            if std::mem::take(&mut self.made) {
                slots::update(self.index, self.run_id, |s| s.done += 1);
            }
        }
        self.current = None;
    }

    /// A ticket for one more key (max_calls): false when the run has taken all it may.
    fn ticket(&self, take: bool) -> bool {
        let max = self.spec.max_calls;
        slots::update(self.index, self.run_id, |s| {
            if !take {
                s.taken -= 1;
                true
            } else if max >= 0 && s.taken >= max {
                false
            } else {
                s.taken += 1;
                true
            }
        })
        .unwrap_or(false)
    }

    /// Reserves the next key (committed at once); its earlier failed attempts with it.
    fn reserve(&mut self) -> Result<Option<(Row, u32)>, Failure> {
        let (host, version) =
            (Value::Text(self.host.clone()), Value::Text(self.inner.session().version.clone()));
        let plans = self.inner.plans().clone();
        let statement = &self.reserve;
        transaction(|| {
            let _as = identity(self.spec.role);
            // A reservation lost in a crash only returns the key to pending: no need to wait for
            // its commit record to reach the disk.
            set_local(c"synchronous_commit", c"off");
            let datums = host::datums(statement, &[&host, &version])?;
            let mut rows = plans.returning(statement, &datums)?;
            Ok(rows.pop().map(|mut row| {
                let attempts = match row.pop().map(|f| f.value) {
                    Some(Value::Text(m)) => queue::attempts_of(&m),
                    _ => 0,
                };
                (row, attempts)
            }))
        })
    }

    /// Seconds until the run's next scheduled key is due, if any is.
    fn next_due(&self) -> Result<Option<f64>, Failure> {
        let sql = &self.next_due;
        transaction(|| {
            let _as = identity(self.spec.role);
            Ok(catalog::read_one::<f64>(sql, &[])?)
        })
    }

    /// After the loop: a cancelled run's key in flight goes back to pending; the transaction ends.
    fn end(mut self, outcome: Result<populate::Summary, Stop<Failure>>) -> Result<(), Failure> {
        match outcome {
            Ok(_) => {
                self.end_key();
                Ok(())
            }
            Err(Stop::Error(error)) | Err(Stop::KeyFailed { error, .. }) => {
                let cancelled = self.class(&error) == Class::Cancel;
                if let (Some(key), true) = (self.current.clone(), self.open.is_some()) {
                    let args = self.inner.session().key_values(&key);
                    let datums = host::datums(&self.release, &args)?;
                    self.inner.plans().execute(&self.release, &datums)?;
                }
                self.made = false;
                self.end_key();
                if !self.cancelled() {
                    // This worker alone was stopped (pg_cancel_backend) or could not go on.
                    let (code, message, ..) = error.parts();
                    slots::update(self.index, self.run_id, |s| {
                        s.broken = true;
                        s.set_error(sqlstate(code), &message);
                    });
                }
                let _ = cancelled;
                Ok(())
            }
        }
    }
}

impl KeyRun for PoolRun<'_> {
    type Error = Failure;

    fn next_batch(&mut self) -> Result<Vec<Row>, Failure> {
        self.end_key();
        loop {
            if self.stopped || self.cancelled() || !self.ticket(true) {
                return Ok(Vec::new());
            }
            if let Some((key, attempts)) = self.reserve()? {
                begin();
                self.open = Some(identity(self.spec.role));
                self.current = Some(key.clone());
                self.attempts = attempts;
                return Ok(vec![key]);
            }
            self.ticket(false);
            // Nothing due now: wait for a key due within the idle timeout (a retry), or end.
            let idle = gucs::worker_idle_timeout().as_secs_f64();
            match self.next_due()? {
                Some(due) if due <= idle => wait_a_little(((due * 1000.0) as i64).clamp(10, 500)),
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
        show(&format!("populate {} key ({})", self.inner.target(), display_row(key)));
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
            return Ok(());
        }
        self.inner.record_failure(key, error, took)?;
        let text =
            format!("make of {} failed for key ({}): {message}", self.inner.target(), display_row(key));
        let stop = !self.spec.suppress_errors;
        slots::update(self.index, self.run_id, |s| {
            s.errors += 1;
            s.set_error(sqlstate(code), &text);
            s.failed |= stop;
        });
        self.stopped |= stop;
        Ok(())
    }

    fn report(&mut self, _progress: &Progress) {}
}
