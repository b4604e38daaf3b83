//! One `dj.populate` run in this backend: the core's populate loop (`datajoint_core::populate`)
//! over a cursor of keys, each key made by the core's make host in a subtransaction within its
//! own memory context, failures recorded in the jobs table.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datajoint_core::dependencies::Table;
use datajoint_core::host::{self as core_host, Session, Statement};
use datajoint_core::make::{self, Instance, MakeError, Prepared, Row, Value};
use datajoint_core::populate::{self, Buckets, Class, KeyRun, Progress, Stop, Summary};
use datajoint_core::sandbox::{Cancel, Limits, SandboxError};
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgMemoryContexts, PgSqlErrorCode};

use super::pending::Pending;
use super::{self as host, Failure, Plans, SpiBackend, SpiHost};
use crate::catalog;
use crate::error::{DjError, DjResult};
use crate::pipeline::tables;
use crate::{gucs, interrupts};

/// Keys read from the key source at a time: a few first (the queries the make asks are learnt
/// from them), then batches whose queries are read for all keys at once.
const FIRST_BATCH: i64 = 8;
const KEY_BATCH: i64 = 1000;

/// One populate run in this backend: the core's loop over a cursor of keys, each key made in a
/// subtransaction within its own memory context, failures recorded in the jobs table.
pub struct Run<'p> {
    session: Arc<Session>,
    prepared: &'p Prepared<SpiHost>,
    plans: Rc<Plans>,
    cursor: pg_sys::Portal,
    limits: Limits,
    key_cx: PgMemoryContexts,
    buckets: Buckets,
    target_oid: pg_sys::Oid,
    /// The target's name, for messages.
    target: String,
    jobs: Table,
    jobs_exist: bool,
    /// Whether a key's success must clear its record: only if the jobs table has records (most
    /// have none, and a DELETE per key would cost a third of a trivial make). A key this run
    /// records fails in this run only once, so records made meanwhile need no clearing here.
    jobs_recorded: bool,
    clear_job: Statement,
    key_exists: Statement,
    record_error: Statement,
    /// When a running guest must stop.
    stop_check: fn() -> bool,
    /// The instance that made the last key, kept for the next one unless that failed or the
    /// table's binding asks for a fresh instance per key.
    instance: Option<Instance<SpiHost>>,
    fresh_instance: bool,
    /// The keys of the current batch, and the rows read ahead for them.
    batch: Vec<Row>,
    prefetched: core_host::Prefetched,
    /// Where the last key made was in the batch.
    position: usize,
    seen_batch: bool,
    /// The rows of the keys made since the last flush (None: each row inserted at once).
    pending: Option<Rc<RefCell<Pending>>>,
    /// Make calls since the last batch's reads.
    made_in_batch: usize,
}

impl<'p> Run<'p> {
    pub fn new(
        session: Arc<Session>,
        prepared: &'p Prepared<SpiHost>,
        plans: Rc<Plans>,
        cursor: pg_sys::Portal,
    ) -> DjResult<Run<'p>> {
        let target = session.target.table.clone();
        let jobs = populate::jobs::jobs_table(&target);
        let jobs_exist = catalog::table_exists(&jobs.schema, &jobs.name)?;
        let jobs_recorded = jobs_exist
            && (!catalog::may_select(&jobs)?
                || catalog::read_one::<bool>(
                    &format!("SELECT EXISTS (SELECT FROM {})", jobs.qualified()),
                    &[],
                )?
                .unwrap_or(true));
        // The jobs table's statements, the same for every key.
        let key: Vec<core_host::Column> = session.target.key().into_iter().cloned().collect();
        let names: Vec<String> = key.iter().map(|c| c.name.clone()).collect();
        let statement =
            |sql: String, params: Vec<core_host::Column>| Statement { label: jobs.qualified(), sql, params };
        let text = |name: &str, type_id: pg_sys::Oid| core_host::Column::parameter(name, type_id.to_u32());
        let mut record_params = key.clone();
        record_params.extend([
            text("error_message", pg_sys::TEXTOID),
            text("duration", pg_sys::FLOAT8OID),
            text("version", pg_sys::TEXTOID),
        ]);
        Ok(Run {
            target_oid: catalog::oid_of(&target)?,
            clear_job: statement(populate::jobs::clear_job_sql(&jobs, &names), key.clone()),
            key_exists: Statement {
                label: target.qualified(),
                sql: populate::jobs::key_exists_sql(&target, &names),
                params: key,
            },
            record_error: statement(populate::jobs::record_error_sql(&jobs, &names), record_params),
            session,
            prepared,
            plans,
            cursor,
            limits: gucs::make_limits(),
            key_cx: PgMemoryContexts::new("dj.populate key"),
            buckets: Buckets::default(),
            target: target.qualified(),
            jobs,
            jobs_exist,
            jobs_recorded,
            stop_check: interrupts::stop_requested,
            instance: None,
            fresh_instance: false,
            batch: Vec::new(),
            prefetched: Default::default(),
            position: 0,
            seen_batch: false,
            pending: Some(Rc::new(RefCell::new(Pending::new(target.clone())))),
            made_in_batch: 0,
        })
    }

    /// A run whose keys come from the job queue: each key's row in the jobs table is deleted when
    /// the key succeeds (the worker pool reserved it there).
    pub fn for_queue(mut self) -> Self {
        self.jobs_exist = true;
        self.jobs_recorded = true;
        // Each key of the queue commits on its own: its rows are written as it is made.
        self.pending = None;
        self
    }

    /// A fresh instance for every key (the table's binding asks for it) rather than one instance
    /// for the keys of the run.
    pub fn with_fresh_instances(mut self, fresh: bool) -> Self {
        self.fresh_instance = fresh;
        self
    }

    /// Stops guests when `check` says so (a pool worker's also polls its run's cancel flag).
    pub fn with_stop_check(mut self, check: fn() -> bool) -> Self {
        self.stop_check = check;
        self
    }

    /// Makes keys under `limits` (a run asked for by another session carries that session's).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads the queries most keys of the last batch asked for every key of `keys` at once, each
    /// in a subtransaction: one that fails (too many rows, say) is left to the keys from then on;
    /// a cancel ends the run.
    fn prefetch(&mut self, keys: &[Row]) -> Result<(), Failure> {
        self.prefetched = Default::default();
        self.batch.clear();
        self.position = 0;
        if keys.len() < 2 {
            return Ok(());
        }
        self.batch = keys.to_vec();
        // The queries most keys of the last batch asked, within one budget for all of them (at
        // most the make's memory limit).
        let min_uses = self.made_in_batch.div_ceil(2);
        self.made_in_batch = 0;
        let mut budget = core_host::PREFETCH_BUDGET.min(self.limits.memory_bytes);
        let mut backend = SpiBackend::new(self.plans.clone());
        for query in self.session.batchable(min_uses) {
            let session = &self.session;
            let read = unsafe {
                self.key_cx.reset();
                self.key_cx.switch_to(|_| {
                    host::in_subtransaction(|| session.prefetch(&mut backend, &query, keys, budget))
                })
            };
            match read {
                Ok(rows) => {
                    budget = budget.saturating_sub(core_host::rows_bytes(&rows));
                    self.prefetched.insert(&query, keys.len(), rows);
                }
                Err(e) if self.class(&e) == Class::Cancel => return Err(e),
                Err(e) => {
                    pgrx::debug1!(
                        "populate {}: reading a query for a batch of keys failed: {}",
                        self.target,
                        e.parts().1
                    );
                    self.session.not_batchable(&query);
                }
            }
        }
        Ok(())
    }

    /// Deletes the key's row from the jobs table.
    pub fn clear_job(&mut self, key: &Row) -> Result<(), Failure> {
        let args = self.session.key_values(key);
        let s = &self.clear_job;
        let datums = unsafe { self.key_cx.switch_to(|_| host::datums(s, &args)) }?;
        self.plans.execute(s, &datums)?;
        Ok(())
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn plans(&self) -> &Rc<Plans> {
        &self.plans
    }

    pub fn jobs(&self) -> &Table {
        &self.jobs
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// The run's outcome as `dj.populate` reports it: the failed key's error (Postgres' own when
    /// cancelled), or a warning with the first failures.
    pub fn finish(&self, outcome: Result<Summary, Stop<Failure>>) -> DjResult<(i64, i64)> {
        let target = self.target();
        match outcome {
            Ok(summary) => {
                if let Some(warning) = summary.warning(&target, &self.jobs.qualified()) {
                    pgrx::warning!("{warning}");
                }
                Ok((summary.done, summary.errors))
            }
            Err(Stop::Error(Failure::Caught(e))) => e.rethrow(),
            Err(Stop::Error(Failure::Dj(e))) => Err(e),
            Err(Stop::KeyFailed { key, error }) => {
                let (code, message, detail, hint) = error.parts();
                let mut err = DjError::new(
                    code,
                    format!("make of {target} failed for key ({}): {message}", make::display_row(&key)),
                    hint.unwrap_or_default(),
                );
                err.detail = detail;
                Err(err)
            }
        }
    }
}

impl KeyRun for Run<'_> {
    type Error = Failure;

    fn next_batch(&mut self) -> Result<Vec<Row>, Failure> {
        let n = if self.seen_batch { KEY_BATCH } else { FIRST_BATCH };
        self.seen_batch = true;
        let keys = self.plans.fetch_cursor(self.cursor, n)?;
        self.prefetch(&keys)?;
        Ok(keys)
    }

    fn check_interrupts(&mut self) {
        pgrx::check_for_interrupts!();
    }

    /// A transaction-level advisory lock per bucket, never waited for; taken outside the key's
    /// subtransaction, so a failed key stays this run's too.
    fn claim(&mut self, key: &Row) -> bool {
        let target = self.target_oid.to_u32();
        self.buckets.claim(key, |bucket| {
            let (class, object) = populate::bucket_lock(target, bucket);
            // SAFETY: a builtin with two int4 arguments, called as SQL would.
            unsafe {
                pgrx::direct_function_call::<bool>(
                    pg_sys::pg_try_advisory_xact_lock_int4,
                    &[class.into_datum(), object.into_datum()],
                )
            }
            .unwrap_or(false)
        })
    }

    fn make(&mut self, key: &Row) -> Result<(), Failure> {
        let target = self.target.as_str();
        let (prepared, limits, jobs_recorded) = (self.prepared, &self.limits, self.jobs_recorded);
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => {
                let mut backend = SpiBackend::new(self.plans.clone());
                backend.pending = self.pending.clone();
                let db = SpiHost {
                    session: self.session.clone(),
                    backend,
                    key: Vec::new(),
                    started: Instant::now(),
                    started_at: 0,
                    objects: Default::default(),
                    prefetched: Default::default(),
                };
                prepared.instance(db, limits, &Cancel::Check(self.stop_check))
            }
        };
        self.made_in_batch += 1;
        // The key's place in the batch (keys come in order; some are skipped).
        let position = (self.position..self.batch.len()).find(|&i| self.batch[i] == *key);
        self.position = position.map_or(self.position, |p| p + 1);
        self.prefetched.at(position);
        let db = instance.db_mut();
        db.key = key.clone();
        db.started = Instant::now();
        db.started_at = local_now_micros();
        std::mem::swap(&mut db.prefetched, &mut self.prefetched);
        let (clear_job, session, plans) = (&self.clear_job, &self.session, &self.plans);
        // Rows held back clear their key's job record when they are written.
        let clear_now = jobs_recorded && self.pending.is_none();
        let result = unsafe {
            self.key_cx.reset();
            self.key_cx.switch_to(|_| {
                host::in_subtransaction(|| {
                    let (result, output) = instance.call(prepared, key, limits);
                    if !output.stdout.is_empty() {
                        pgrx::log!("{target} make stdout: {}", output.stdout.trim_end());
                    }
                    if let Err(MakeError::Sandbox(SandboxError::Interrupted)) = &result {
                        // Stopped for a cancel or shutdown: Postgres raises its own error.
                        pgrx::check_for_interrupts!();
                    }
                    result.map_err(|e| core_host::failure(e, &output, target))?;
                    if clear_now {
                        let args = session.key_values(key);
                        plans.execute(clear_job, &host::datums(clear_job, &args)?)?;
                    }
                    Ok(())
                })
            })
        };
        if let Some(pending) = &self.pending {
            match &result {
                Ok(()) => pending.borrow_mut().keep_key(key, instance.db_mut().started.elapsed()),
                Err(_) => pending.borrow_mut().discard_key(),
            }
        }
        // The key's uploads and store handles go with it (spool files removed now).
        let db = instance.db_mut();
        std::mem::swap(&mut db.prefetched, &mut self.prefetched);
        db.objects = Default::default();
        db.backend.stores = Default::default();
        if result.is_ok() && instance.usable() && !self.fresh_instance {
            self.instance = Some(instance);
        }
        result
    }

    fn class(&self, error: &Failure) -> Class {
        let (code, ..) = error.parts();
        match (error, code) {
            (
                Failure::Caught(_),
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED
                | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
                | PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN,
            ) => Class::Cancel,
            (_, PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION) => Class::Duplicate,
            _ => Class::Failure,
        }
    }

    fn message(&self, error: &Failure) -> String {
        error.parts().1
    }

    fn made_meanwhile(&mut self, key: &Row) -> Result<bool, Failure> {
        let args = self.session.key_values(key);
        let s = &self.key_exists;
        // The datums in the key's context (reset with the next key), the query in the run's.
        let datums = unsafe { self.key_cx.switch_to(|_| host::datums(s, &args)) }?;
        Ok(self.plans.exists(s, &datums)?)
    }

    fn record_failure(&mut self, key: &Row, error: &Failure, took: Duration) -> Result<(), Failure> {
        if !self.jobs_exist {
            tables::ensure_jobs_table(&self.session.target.table)?;
            self.jobs_exist = true;
        }
        let (_, message, detail, _) = error.parts();
        let text = match &detail {
            Some(d) => format!("{message}\n{d}"),
            None => message,
        };
        // A guest's message or stderr may hold NUL, which text cannot: shown as \0, as in errors.
        let text = if text.contains('\0') { text.replace('\0', "\\0") } else { text };
        let mut args = self.session.key_values(key);
        let (text, took, version) =
            (Value::Text(text), Value::Float(took.as_secs_f64()), Value::Text(self.session.version.clone()));
        args.extend([&text, &took, &version]);
        let s = &self.record_error;
        // The datums in the key's context (they go with it); the statement runs in the run's, so
        // an error in it never unwinds out of a switched context.
        let datums = unsafe { self.key_cx.switch_to(|_| host::datums(s, &args)) }?;
        self.plans.execute(s, &datums)?;
        Ok(())
    }

    fn report(&mut self, progress: &Progress) {
        pgrx::notice!("{}", progress.describe(self.target()));
    }

    fn flush(&mut self) -> Result<Vec<(Row, Failure, Duration)>, Failure> {
        let Some(pending) = self.pending.clone() else {
            return Ok(Vec::new());
        };
        let (clear_job, session, plans) = (&self.clear_job, &self.session, &self.plans);
        let jobs_recorded = self.jobs_recorded;
        let done = |key: &Row| -> DjResult<()> {
            if jobs_recorded {
                let args = session.key_values(key);
                plans.execute(clear_job, &host::datums(clear_job, &args)?)?;
            }
            Ok(())
        };
        let result = pending.borrow_mut().flush(&self.plans, |e| self.class(e) == Class::Cancel, &done);
        // A key whose rows failed failed: the instance that made it is not kept.
        if !matches!(&result, Ok(failures) if failures.is_empty()) {
            self.instance = None;
        }
        result
    }
}

/// Now, as the session's wall clock (what CURRENT_TIMESTAMP stores in a `timestamp` column such as
/// `_job_start_time`), in microseconds since 1970-01-01 00:00.
fn local_now_micros() -> i64 {
    unsafe {
        let now = pg_sys::GetCurrentTimestamp();
        pgrx::direct_function_call::<i64>(pg_sys::timestamptz_timestamp, &[now.into_datum()])
            .map_or(0, |local| local + datajoint_core::values::PG_EPOCH_MICROS)
    }
}
