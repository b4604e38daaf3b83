//! Runs in the worker pool and DataJoint's job queue: `dj.populate_async`, `dj.wait`,
//! `dj.cancel`, the view `dj.runs`; `dj.jobs`, `dj.jobs_refresh`, `dj.jobs_ignore`,
//! `dj.jobs_clear_errors`, `dj.jobs_reserve` over a table's `~~name` jobs table (datajoint-python 2.3.5's).

use datajoint_core::dependencies::Table;
use datajoint_core::naming::Tier;
use datajoint_core::populate::{self, queue, Order};
use pgrx::datum::Timestamp;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::catalog;
use crate::error::{DjError, DjResult, OrRaise};
use crate::make::source::{source_of, Source};
use crate::pipeline::tables;
use crate::security;
use crate::worker::{self, slots};

/// `dj.populate_async(table, ..., workers)`: starts a populate run in the worker pool and returns
/// its id at once. The run goes on after this session ends; `dj.runs` shows it, `dj.wait` waits
/// for it, `dj.cancel` stops it.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn populate_async(
    table: &str,
    restriction: default!(Option<&str>, "NULL"),
    max_calls: default!(Option<i64>, "NULL"),
    suppress_errors: default!(bool, false),
    order: default!(&str, "'original'"),
    workers: default!(i32, 1),
    retries: default!(i32, 0),
    priority: default!(i32, 5),
) -> i64 {
    const FN: &str = "dj.populate_async";
    let _pin = security::pin();
    let started = (|| {
        let order = crate::make::source::order(order)?;
        let source = source_of(catalog::resolve(table)?, restriction)?;
        crate::make::source::make_of(&source.name)?;
        let spec = worker::spec(
            &source,
            restriction,
            max_calls,
            suppress_errors,
            false,
            order,
            workers,
            retries,
            priority,
        )?;
        worker::start(spec, &source.name.qualified())
    })()
    .or_raise(FN);
    started.1
}

/// `dj.populate_all(items, ..., workers)`: populates every Computed and Imported table of the
/// named schemas and tables in dependency order, in the worker pool, and waits: each table's run
/// as it ended. The workers overlap the tables: a key is taken as soon as its upstream rows are
/// there (see worker::pipeline).
#[pg_extern(volatile, parallel_unsafe)]
fn populate_all(
    items: Vec<String>,
    suppress_errors: default!(bool, false),
    order: default!(&str, "'original'"),
    workers: default!(i32, 1),
    retries: default!(i32, 0),
    priority: default!(i32, 5),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(state, String),
        name!(done, i64),
        name!(errors, i64),
        name!(remaining, Option<i64>),
    ),
> {
    const FN: &str = "dj.populate_all";
    let _pin = security::pin();
    let ended = (|| {
        let (specs, upstream, label) =
            pipeline_of(&items, suppress_errors, order, workers, retries, priority)?;
        worker::run_group_and_wait(specs, &upstream, &label)
    })()
    .or_raise(FN);
    TableIterator::new(ended.into_iter().map(|e| (e.table, e.state, e.done, e.errors, e.remaining)))
}

/// `dj.populate_all_async(items, ..., workers)`: starts `dj.populate_all` and returns the
/// pipeline's id (its first table's run; `dj.runs` shows a row per table, `dj.wait` and
/// `dj.cancel` take it).
#[pg_extern(volatile, parallel_unsafe)]
fn populate_all_async(
    items: Vec<String>,
    suppress_errors: default!(bool, false),
    order: default!(&str, "'original'"),
    workers: default!(i32, 1),
    retries: default!(i32, 0),
    priority: default!(i32, 5),
) -> i64 {
    const FN: &str = "dj.populate_all_async";
    let _pin = security::pin();
    (|| {
        let (specs, upstream, label) =
            pipeline_of(&items, suppress_errors, order, workers, retries, priority)?;
        Ok::<_, DjError>(worker::start_group(specs, &upstream, &label)?.1[0])
    })()
    .or_raise(FN)
}

/// The runs of a pipeline: a spec per Computed or Imported table `items` names, in dependency
/// order; for each, which of the others are upstream of it (bit j: table j); a label.
fn pipeline_of(
    items: &[String],
    suppress_errors: bool,
    order: &str,
    workers: i32,
    retries: i32,
    priority: i32,
) -> DjResult<(Vec<slots::Spec>, Vec<u16>, String)> {
    let order = crate::make::source::order(order)?;
    let deps = catalog::dependencies()?;
    let named = catalog::named_tables(&deps, items)?;
    let made: Vec<&Table> = named
        .iter()
        .filter(|t| matches!(Tier::of_table(&t.name), Some(Tier::Computed | Tier::Imported)))
        .collect();
    let tables = deps.topological(made);
    if tables.is_empty() {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("no Computed or Imported table in {}", items.join(", ")),
            "Name schemas or tables whose makes fill them (dj.tables lists the tiers).",
        ));
    }
    if tables.len() > slots::MAX_MEMBERS {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "{} tables to populate; a pipeline run takes at most {}",
                tables.len(),
                slots::MAX_MEMBERS
            ),
            "Populate the pipeline in parts, upstream tables first.",
        ));
    }
    let mut specs = Vec::with_capacity(tables.len());
    let mut upstream = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let source = source_of((*table).clone(), None)?;
        crate::make::source::make_of(&source.name)?;
        specs.push(worker::spec(
            &source,
            None,
            None,
            suppress_errors,
            false,
            order,
            workers,
            retries,
            priority,
        )?);
        let ancestors = deps.ancestors(table);
        upstream.push(
            tables[..i]
                .iter()
                .enumerate()
                .filter(|(_, t)| ancestors.contains(t))
                .fold(0u16, |m, (j, _)| m | 1 << j),
        );
    }
    Ok((specs, upstream, items.join(", ")))
}

/// The run's slot, if the caller may see it (a member of the role that asked, or a superuser).
fn visible_run(run: i64) -> DjResult<Option<slots::Handle>> {
    let Some((h, slot)) = slots::find(run) else { return Ok(None) };
    let may = catalog::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role($1::pg_catalog.oid, 'USAGE')",
        &[pg_sys::Oid::from(slot.spec.role).into()],
    )?
    .unwrap_or(false);
    Ok(may.then_some(h))
}

fn unknown_run(run: i64) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("no run {run} under way that this role may see"),
        "SELECT * FROM dj.runs lists the runs of the roles you are a member of.",
    )
}

type RunRow = (
    name!(state, String),
    name!(done, i64),
    name!(errors, i64),
    name!(remaining, Option<i64>),
    name!(last_error, Option<String>),
);

/// `dj.wait(run)`: waits until the run ends; returns how it ended (also for a run that ended
/// before, from dj.runs). A cancel of this statement cancels only the wait.
#[pg_extern(volatile, parallel_unsafe)]
fn wait(
    run: i64,
) -> TableIterator<
    'static,
    (
        name!(state, String),
        name!(done, i64),
        name!(errors, i64),
        name!(remaining, Option<i64>),
        name!(last_error, Option<String>),
    ),
> {
    const FN: &str = "dj.wait";
    let _pin = security::pin();
    if let Some(h) = visible_run(run).or_raise(FN) {
        // A cancel of this statement ends the wait, not the run.
        worker::wait(h, None);
    }
    let row = ended(run).or_raise(FN).unwrap_or_else(|| unknown_run(run).raise(FN));
    TableIterator::once(row)
}

/// How run `run` ended, from dj.runs, read with a fresh snapshot.
fn ended(run: i64) -> DjResult<Option<RunRow>> {
    Ok(Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT state, done, errors, remaining, last_error FROM dj.runs WHERE id OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[run.into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let r = rows.first();
        Ok(Some((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<i64>(2)?.unwrap_or(0),
            r.get::<i64>(3)?.unwrap_or(0),
            r.get::<i64>(4)?,
            r.get::<String>(5)?,
        )))
    })?)
}

/// `dj.cancel(run)`: stops a run: no worker takes another key and the guests running stop within
/// the epoch tick; their keys go back to pending. Whether it was running.
#[pg_extern(volatile, parallel_unsafe)]
fn cancel(run: i64) -> bool {
    const FN: &str = "dj.cancel";
    let _pin = security::pin();
    match visible_run(run).or_raise(FN) {
        Some(h) => worker::cancel(h),
        None => {
            if ended(run).or_raise(FN).is_none() {
                unknown_run(run).raise(FN);
            }
            false
        }
    }
}

/// `dj._live_runs()`: the runs in shared memory, behind the view dj.runs.
#[pg_extern(volatile, parallel_unsafe, name = "_live_runs")]
fn live_runs() -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(target, pg_sys::Oid),
        name!(role, pg_sys::Oid),
        name!(workers, i32),
        name!(state, String),
        name!(started, f64),
        name!(finished, Option<f64>),
        name!(done, i64),
        name!(errors, i64),
        name!(remaining, Option<i64>),
        name!(last_error, Option<String>),
        name!(pipeline, Option<i64>),
        name!(auto, bool),
    ),
> {
    let _pin = security::pin();
    let runs = if slots::available() { slots::of_this_database() } else { Vec::new() };
    // (An auto run has no id until its first worker takes one.)
    let runs: Vec<slots::Slot> = runs.into_iter().filter(|s| s.spec.run_id != 0).collect();
    // Only the runs of roles the caller is a member of.
    let runs: Vec<slots::Slot> = runs
        .into_iter()
        .filter(|s| {
            catalog::read_one::<bool>(
                "SELECT pg_catalog.pg_has_role($1::pg_catalog.oid, 'USAGE')",
                &[pg_sys::Oid::from(s.spec.role).into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false)
        })
        .collect();
    TableIterator::new(runs.into_iter().map(|s| {
        let finished = s.state.finished();
        (
            s.spec.run_id,
            pg_sys::Oid::from(s.spec.target),
            pg_sys::Oid::from(s.spec.role),
            s.spec.workers as i32,
            s.state.name().to_string(),
            s.started,
            finished.then_some(s.finished),
            s.done,
            s.errors,
            if finished {
                (s.remaining >= 0).then_some(s.remaining)
            } else {
                Some((s.total - s.done - s.errors).max(0))
            },
            s.error(),
            (s.spec.pipeline != 0).then_some(s.spec.pipeline),
            s.spec.auto,
        )
    }))
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// A table's source with its jobs table created if missing.
fn queue_of(
    table: &str,
    restriction: Option<&str>,
) -> DjResult<(Source, datajoint_core::dependencies::Table)> {
    let source = source_of(catalog::resolve(table)?, restriction)?;
    tables::ensure_jobs_table(&source.name)?;
    let jobs = populate::jobs::jobs_table(&source.name);
    Ok((source, jobs))
}

fn count(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> DjResult<i64> {
    Ok(catalog::write_one::<i64>(sql, args)?.unwrap_or(0))
}

/// `dj.jobs_refresh(table, restriction, priority, delay)`: brings the jobs table up to date, as
/// datajoint-python's `jobs.refresh` does: reservations of processes that are gone back to
/// pending (by liveness), a pending row for each missing key (scheduled `delay` seconds from now),
/// rows of keys that left the key source or are made removed.
#[pg_extern(volatile, parallel_unsafe)]
fn jobs_refresh(
    table: &str,
    restriction: default!(Option<&str>, "NULL"),
    priority: default!(i32, 5),
    delay: default!(f64, 0.0),
) -> TableIterator<'static, (name!(added, i64), name!(released, i64), name!(removed, i64))> {
    const FN: &str = "dj.jobs_refresh";
    let _pin = security::pin();
    let counts = (|| {
        let (source, jobs) = queue_of(table, restriction)?;
        let released = count(&queue::release_orphans_sql(&jobs), &[])?;
        let keys = source.keys(true, Order::Original, None);
        let added = count(&queue::refresh_sql(&jobs, &source.key, &keys), &[priority.into(), delay.into()])?;
        let all = source.keys(false, Order::Original, None);
        let removed = count(
            &format!(
                "WITH removed AS ({} RETURNING 1) SELECT pg_catalog.count(*) FROM removed",
                queue::prune_sql(&jobs, &source.name, &source.key, &all, source.condition.as_deref())
            ),
            &[],
        )?;
        Ok::<_, DjError>((added, released, removed))
    })()
    .or_raise(FN);
    TableIterator::once(counts)
}

/// `dj.jobs_ignore(table, restriction)`: marks the table's missing keys (restricted) `ignore`: no
/// populate takes them until the rows are deleted. How many.
#[pg_extern(volatile, parallel_unsafe)]
fn jobs_ignore(table: &str, restriction: default!(Option<&str>, "NULL")) -> i64 {
    const FN: &str = "dj.jobs_ignore";
    let _pin = security::pin();
    (|| {
        let (source, jobs) = queue_of(table, restriction)?;
        let keys = source.keys(true, Order::Original, None);
        count(&queue::ignore_sql(&jobs, &source.key, &keys), &[])
    })()
    .or_raise(FN)
}

/// `dj.jobs_clear_errors(table, restriction)`: deletes the table's error rows (restricted), so the
/// next populate or refresh queues those keys again. How many.
#[pg_extern(volatile, parallel_unsafe)]
fn jobs_clear_errors(table: &str, restriction: default!(Option<&str>, "NULL")) -> i64 {
    const FN: &str = "dj.jobs_clear_errors";
    let _pin = security::pin();
    (|| {
        let (source, jobs) = queue_of(table, restriction)?;
        count(&queue::clear_errors_sql(&jobs, source.condition.as_deref()), &[])
    })()
    .or_raise(FN)
}

/// `dj.jobs_reserve(table, restriction)`: reserves the next due pending key for this session, as
/// a pool worker does (one conditional UPDATE that skips rows other sessions are taking), and
/// returns it; NULL when none is due. For workers outside the database: make the key, then delete
/// its job row in the same transaction (success) or mark it error.
#[pg_extern(volatile, parallel_unsafe)]
fn jobs_reserve(table: &str, restriction: default!(Option<&str>, "NULL")) -> Option<JsonB> {
    const FN: &str = "dj.jobs_reserve";
    let _pin = security::pin();
    (|| {
        let (source, jobs) = queue_of(table, restriction)?;
        let version = crate::make::source::make_of(&source.name).map(|(_, sha)| sha).unwrap_or_default();
        let host = catalog::read_one::<String>(
            "SELECT COALESCE(pg_catalog.host(pg_catalog.inet_client_addr()), '')",
            &[],
        )?
        .unwrap_or_default();
        let sql = format!(
            "WITH r AS ({}) SELECT pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.-) 'error_message'::pg_catalog.text FROM r",
            queue::reserve_sql(&jobs, &source.key, source.condition.as_deref())
        );
        catalog::write_one::<JsonB>(&sql, &[host.into(), version.into(), 1i64.into()])
    })()
    .or_raise(FN)
}

type JobRow = (
    name!(key, JsonB),
    name!(status, String),
    name!(priority, i64),
    name!(created_time, Option<Timestamp>),
    name!(scheduled_time, Option<Timestamp>),
    name!(reserved_time, Option<Timestamp>),
    name!(completed_time, Option<Timestamp>),
    name!(duration, Option<f64>),
    name!(error_message, String),
    name!(user_name, String),
    name!(host, String),
    name!(pid, i32),
    name!(connection_id, i64),
    name!(version, String),
);

/// `dj.jobs(table)`: the rows of the table's jobs table, keys as jsonb, by status, priority and
/// schedule (none when it has no jobs table yet).
#[pg_extern(stable, parallel_safe)]
fn jobs(
    table: &str,
) -> TableIterator<
    'static,
    (
        name!(key, JsonB),
        name!(status, String),
        name!(priority, i64),
        name!(created_time, Option<Timestamp>),
        name!(scheduled_time, Option<Timestamp>),
        name!(reserved_time, Option<Timestamp>),
        name!(completed_time, Option<Timestamp>),
        name!(duration, Option<f64>),
        name!(error_message, String),
        name!(user_name, String),
        name!(host, String),
        name!(pid, i32),
        name!(connection_id, i64),
        name!(version, String),
    ),
> {
    const FN: &str = "dj.jobs";
    let _pin = security::pin();
    TableIterator::new(job_rows(table).or_raise(FN))
}

fn job_rows(table: &str) -> DjResult<Vec<JobRow>> {
    let source = source_of(catalog::resolve(table)?, None)?;
    let jobs = populate::jobs::jobs_table(&source.name);
    if !catalog::table_exists(&jobs.schema, &jobs.name)? {
        return Ok(Vec::new());
    }
    let key: Vec<String> = source.key.iter().map(|k| datajoint_core::sql::literal(k)).collect();
    let sql = format!(
        "SELECT pg_catalog.jsonb_build_object({pairs}), j.status::pg_catalog.text, j.priority::pg_catalog.int8, \
         j.created_time, j.scheduled_time, j.reserved_time, j.completed_time, j.duration::pg_catalog.float8, \
         j.error_message::pg_catalog.text, j.\"user\"::pg_catalog.text, j.host::pg_catalog.text, j.pid::pg_catalog.int4, \
         j.connection_id::pg_catalog.int8, j.version::pg_catalog.text \
         FROM {jobs} AS j ORDER BY j.status, j.priority, j.scheduled_time",
        pairs = source
            .key
            .iter()
            .zip(&key)
            .map(|(k, lit)| format!("{lit}, j.{}", datajoint_core::sql::ident(k)))
            .collect::<Vec<_>>()
            .join(", "),
        jobs = jobs.qualified(),
    );
    Ok(Spi::connect(|client| {
        let mut out = Vec::new();
        for r in client.select(&sql, None, &[])? {
            out.push((
                r.get::<JsonB>(1)?.unwrap_or(JsonB(serde_json::Value::Null)),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<i64>(3)?.unwrap_or(0),
                r.get::<Timestamp>(4)?,
                r.get::<Timestamp>(5)?,
                r.get::<Timestamp>(6)?,
                r.get::<Timestamp>(7)?,
                r.get::<f64>(8)?,
                r.get::<String>(9)?.unwrap_or_default(),
                r.get::<String>(10)?.unwrap_or_default(),
                r.get::<String>(11)?.unwrap_or_default(),
                r.get::<i32>(12)?.unwrap_or(0),
                r.get::<i64>(13)?.unwrap_or(0),
                r.get::<String>(14)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })?)
}

extension_sql!(
    r#"
CREATE VIEW dj.runs WITH (security_barrier = true) AS
SELECT coalesce(l.id, r.id) AS id,
       CASE WHEN r.id IS NULL THEN l.target::pg_catalog.regclass::pg_catalog.text
            ELSE pg_catalog.format('%I.%I', r.schema_name, r.table_name) END AS table_name,
       coalesce(r.role_name, pg_catalog.pg_get_userbyid(l.role)) AS role_name,
       coalesce(l.workers, r.workers) AS workers,
       coalesce(l.state, CASE WHEN r.state OPERATOR(pg_catalog.=) ANY ('{starting,running}') THEN 'interrupted' ELSE r.state END) AS state,
       coalesce(r.started, pg_catalog.to_timestamp(l.started)) AS started,
       coalesce(pg_catalog.to_timestamp(l.finished), r.finished) AS finished,
       coalesce(l.done, r.done) AS done,
       coalesce(l.errors, r.errors) AS errors,
       coalesce(l.remaining, r.remaining) AS remaining,
       coalesce(l.last_error, r.last_error) AS last_error,
       coalesce(l.pipeline, r.pipeline) AS pipeline,
       coalesce(l.auto, r.auto) AS auto
  FROM dj._runs r FULL JOIN dj._live_runs() l ON l.id OPERATOR(pg_catalog.=) r.id
 WHERE CASE WHEN coalesce(r.role_name, pg_catalog.pg_get_userbyid(l.role)) OPERATOR(pg_catalog.=) ANY (SELECT rolname FROM pg_catalog.pg_roles)
            THEN pg_catalog.pg_has_role(coalesce(r.role_name, pg_catalog.pg_get_userbyid(l.role)), 'USAGE')
            ELSE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER) END;
COMMENT ON VIEW dj.runs IS 'Populate runs in the worker pool (of the roles you are a member of): table, role, workers, state (starting, running, done, failed, cancelled, interrupted), started, finished, keys done, failed and remaining, last error, the pipeline (dj.populate_all) a run is part of, and whether it is an auto populate''s (dj.auto_populate).';
GRANT SELECT ON dj.runs TO PUBLIC;
COMMENT ON FUNCTION dj._live_runs() IS 'Internal: the runs in shared memory (of the roles you are a member of), behind the view dj.runs.';
COMMENT ON FUNCTION dj.populate_async(text, text, bigint, boolean, text, integer, integer, integer) IS 'Starts a populate run in the worker pool and returns its id; the run goes on after the session ends (dj.runs, dj.wait, dj.cancel).';
COMMENT ON FUNCTION dj.populate_all(text[], boolean, text, integer, integer, integer) IS 'Populates every Computed and Imported table of the named schemas and tables in dependency order in the worker pool, overlapping tables (a key is taken once its upstream rows are there), and waits: each table''s run as it ended.';
COMMENT ON FUNCTION dj.populate_all_async(text[], boolean, text, integer, integer, integer) IS 'Starts dj.populate_all and returns the pipeline''s id (its first table''s run): dj.runs shows a row per table; dj.wait and dj.cancel take the id.';
COMMENT ON FUNCTION dj.wait(bigint) IS 'Waits until a run ends; returns its state, keys done, failed and remaining, last error.';
COMMENT ON FUNCTION dj.cancel(bigint) IS 'Stops a run: no worker takes another key, running guests stop, their keys go back to pending.';
COMMENT ON FUNCTION dj.jobs(text) IS 'The rows of a table''s jobs table (datajoint-python''s ~~name), keys as jsonb.';
COMMENT ON FUNCTION dj.jobs_refresh(text, text, integer, double precision) IS 'Brings a jobs table up to date: orphaned reservations (their process is gone) back to pending, missing keys added as pending, keys that left the key source removed.';
COMMENT ON FUNCTION dj.jobs_ignore(text, text) IS 'Marks missing keys ignore: no populate takes them.';
COMMENT ON FUNCTION dj.jobs_clear_errors(text, text) IS 'Deletes error rows so the next populate or refresh queues those keys again.';
COMMENT ON FUNCTION dj.jobs_reserve(text, text) IS 'Reserves the next due pending key for this session (as a pool worker does) and returns it, or NULL.';
"#,
    name = "runs_view",
    requires = [
        live_runs,
        populate_async,
        wait,
        cancel,
        jobs,
        jobs_refresh,
        jobs_ignore,
        jobs_clear_errors,
        jobs_reserve,
        "catalog"
    ]
);
