//! Make functions and `dj.populate`: `dj.register_module`, `dj.set_make`, `dj.populate`,
//! `dj.key_source`, `dj.progress`, `dj.stale`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use datajoint_core::host::{Scope, Session};
use datajoint_core::populate::{self, Order, Settings};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::catalog;
use crate::error::{DjError, DjResult, OrRaise};
use crate::make::source::{auto_populated, count_rows, fresh_instance_of, make_of, source_of};
use crate::make::{self as host, Plans, Run};
use crate::pipeline::delete;
use crate::pipeline::writes::PipelineWrite;
use crate::rows::{self, JsonRow};
use crate::{gucs, security, worker};

/// How often populate reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `dj.register_module(name, component)`: checks that `component` is a make function of the
/// world `datajoint:make/make`, compiles it (in a child process: cancellable, its memory capped)
/// and stores it under `name`. Returns its sha256. Registering a name again points the name at the
/// new code; tables keep running the version their owner bound (`dj.set_make` binds the new one).
/// Not executable by PUBLIC: a superuser grants EXECUTE to the roles that may add code.
#[pg_extern(volatile, parallel_unsafe)]
fn register_module(name: &str, component: &[u8]) -> String {
    const FN: &str = "dj.register_module";
    let _pin = security::pin();
    let valid_name = name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid_name {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("\"{name}\" is not a module name"),
            "Module names start with a letter or _, then letters, digits, _ . - (at most 63).",
        )
        .raise(FN);
    }
    let limit = gucs::max_module_size();
    if component.len() > limit {
        DjError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("the component is {} bytes; dj.max_module_size allows {limit}", component.len()),
            "Build a smaller component (release build, stripped), or have a superuser raise dj.max_module_size.",
        )
        .raise(FN);
    }
    let role = security::current_role();
    // Checked before compiling (which costs seconds), and again when the name is written.
    if !may_replace(name, &role).or_raise(FN) {
        registered_by_another(name, "replace it; choose another name").raise(FN);
    }
    let artifact = host::validate(component).or_raise(FN);
    let sha256 = security::as_extension_owner(|| {
        let sha256 = catalog::write_one::<String>(
            "INSERT INTO dj.module_versions AS v (sha256, component, registered_by) \
             VALUES (pg_catalog.encode(pg_catalog.sha256($1), 'hex'), $1, $2::pg_catalog.name) \
             ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256 RETURNING v.sha256",
            &[component.into(), role.as_str().into()],
        )?
        .expect("RETURNING gives a row");
        // The name moves to the new code only if the caller may still replace it (checked again
        // in the statement: another role may have registered the name meanwhile).
        let named = catalog::write_one::<bool>(
            "INSERT INTO dj.modules AS m (name, sha256, registered_by) VALUES ($1, $2, $3::pg_catalog.name) \
             ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, registered_at = pg_catalog.now(), \
               registered_by = EXCLUDED.registered_by \
             WHERE pg_catalog.pg_has_role($3::pg_catalog.name, m.registered_by, 'USAGE') RETURNING true",
            &[name.into(), sha256.as_str().into(), role.as_str().into()],
        )?;
        if named.is_none() {
            return Err(registered_by_another(name, "replace it; choose another name"));
        }
        collect_module_versions()?;
        Ok(sha256)
    })
    .or_raise(FN);
    host::store_artifact(&sha256, &artifact).or_raise(FN);
    sha256
}

/// Whether `role` may point module `name` at new code (nobody registered it yet, or a role `role`
/// is a member of did).
fn may_replace(name: &str, role: &str) -> DjResult<bool> {
    Ok(catalog::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role($2::pg_catalog.name, m.registered_by, 'USAGE') FROM dj.modules m \
         WHERE m.name OPERATOR(pg_catalog.=) $1",
        &[name.into(), role.into()],
    )?
    .unwrap_or(true))
}

/// `action`: what only the registrant may do, as the HINT ends ("replace it; choose another name").
fn registered_by_another(name: &str, action: &str) -> DjError {
    DjError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("module {name} was registered by another role"),
        format!("Only (a member of) the role that registered a module may {action}."),
    )
}

/// Removes the module versions no name and no table uses any more, with their machine code.
/// Runs as the extension's owner.
fn collect_module_versions() -> DjResult<()> {
    Spi::run("SELECT dj._collect_module_versions()")?;
    Ok(())
}

/// `dj.unregister_module(name)`: removes the name. Tables bound to one of its versions keep it.
#[pg_extern(volatile, parallel_unsafe)]
fn unregister_module(name: &str) -> bool {
    const FN: &str = "dj.unregister_module";
    let _pin = security::pin();
    let role = security::current_role();
    if !may_replace(name, &role).or_raise(FN) {
        registered_by_another(name, "remove it").raise(FN);
    }
    security::as_extension_owner(|| {
        let removed = catalog::write_one::<bool>(
            "DELETE FROM dj.modules m WHERE m.name OPERATOR(pg_catalog.=) $1 \
               AND pg_catalog.pg_has_role($2::pg_catalog.name, m.registered_by, 'USAGE') RETURNING true",
            &[name.into(), role.as_str().into()],
        )?;
        collect_module_versions()?;
        Ok(removed.unwrap_or(false))
    })
    .or_raise(FN)
}

/// `dj.set_make(table, module)`: `dj.populate(table)` runs the code registered under `module`
/// now, and keeps running exactly that code (by its sha256) until the table's owner binds again.
/// One instance of the code serves the keys of a run in turn (what it keeps in memory is there
/// for the next key; a failed key's instance is replaced), unless `fresh_instance` asks for a
/// fresh instance for every key.
#[pg_extern(volatile, parallel_unsafe)]
fn set_make(table: &str, module: &str, fresh_instance: default!(bool, false)) {
    const FN: &str = "dj.set_make";
    let _pin = security::pin();
    let name = catalog::resolve(table).or_raise(FN);
    auto_populated(&name).or_raise(FN);
    let owner = catalog::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
        &[name.qualified().into()],
    )
    .or_raise(FN)
    .unwrap_or(false);
    if !owner {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("only the owner of {} may choose its make function", name.qualified()),
            "Ask the table's owner, or a member of the owning role.",
        )
        .raise(FN);
    }
    let role = security::current_role();
    let bound = security::as_extension_owner(|| {
        let bound = catalog::write_one::<bool>(
            "INSERT INTO dj.makes (schema_name, table_name, module, sha256, set_by, fresh_instance) \
             SELECT $1, $2, m.name, m.sha256, $4::pg_catalog.name, $5 FROM dj.modules m \
             WHERE m.name OPERATOR(pg_catalog.=) $3 \
             ON CONFLICT (schema_name, table_name) DO UPDATE SET module = EXCLUDED.module, \
               sha256 = EXCLUDED.sha256, set_at = pg_catalog.now(), set_by = EXCLUDED.set_by, \
               fresh_instance = EXCLUDED.fresh_instance \
             RETURNING true",
            &[
                name.schema.as_str().into(),
                name.name.as_str().into(),
                module.into(),
                role.as_str().into(),
                fresh_instance.into(),
            ],
        )?;
        collect_module_versions()?;
        Ok(bound.is_some())
    })
    .or_raise(FN);
    if !bound {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("module {module} is not registered"),
            "Register it first: SELECT dj.register_module(name, bytes); SELECT name FROM dj.modules lists them.",
        )
        .raise(FN);
    }
}

/// The rows of a query as jsonb objects, exactly as PostgreSQL makes them.
fn json_rows(sql: &str) -> DjResult<Vec<JsonRow>> {
    rows::json_rows(&format!("SELECT pg_catalog.to_jsonb(q) FROM ({sql}) AS q"))
}

/// `dj.key_source(table, restriction)`: the keys a populate would compute, computed or not.
#[pg_extern(stable, parallel_safe)]
fn key_source(table: &str, restriction: default!(Option<&str>, "NULL")) -> SetOfIterator<'static, JsonRow> {
    const FN: &str = "dj.key_source";
    let _pin = security::pin();
    let source = catalog::resolve(table).and_then(|name| source_of(name, restriction)).or_raise(FN);
    SetOfIterator::new(json_rows(&source.keys(false, Order::Original, None)).or_raise(FN))
}

/// `dj.progress(table, restriction)`: how many keys remain, of how many (NULL for tables nobody
/// populates: Manual, Lookup, Part, so that a dashboard may ask it of every table).
#[pg_extern(stable, parallel_safe)]
fn progress(
    table: &str,
    restriction: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(remaining, Option<i64>), name!(total, Option<i64>))> {
    const FN: &str = "dj.progress";
    let _pin = security::pin();
    let name = catalog::resolve(table).or_raise(FN);
    if auto_populated(&name).is_err() {
        return TableIterator::once((None, None));
    }
    let source = source_of(name, restriction).or_raise(FN);
    let remaining = source.count(true).or_raise(FN);
    let total = source.count(false).or_raise(FN);
    TableIterator::once((Some(remaining), Some(total)))
}

type PipelineTableRow = (
    name!(schema_name, String),
    name!(class_name, String),
    name!(tier, String),
    name!(table_name, String),
    name!(rows, Option<i64>),
    name!(make_module, Option<String>),
    name!(make_sha256, Option<String>),
    name!(remaining, Option<i64>),
    name!(errors, Option<i64>),
    name!(last_populated, Option<pgrx::datum::Timestamp>),
);

/// `dj._pipeline_tables()`, behind the view `dj.pipeline_tables`: every DataJoint table with its
/// tier, rows, make function and populate state, as a BI tool can show them. Figures the calling
/// role may not read are NULL.
#[pg_extern(stable, parallel_safe, name = "_pipeline_tables")]
fn pipeline_tables() -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(class_name, String),
        name!(tier, String),
        name!(table_name, String),
        name!(rows, Option<i64>),
        name!(make_module, Option<String>),
        name!(make_sha256, Option<String>),
        name!(remaining, Option<i64>),
        name!(errors, Option<i64>),
        name!(last_populated, Option<pgrx::datum::Timestamp>),
    ),
> {
    const FN: &str = "dj.pipeline_tables";
    let _pin = security::pin();
    TableIterator::new(pipeline_rows().or_raise(FN))
}

fn pipeline_rows() -> DjResult<Vec<PipelineTableRow>> {
    let deps = catalog::dependencies()?;
    let mut out = Vec::new();
    for name in catalog::tables(None)? {
        let table = &name;
        let Some(tier) = table.tier() else { continue };
        let readable = catalog::may_select(&name)?;
        let count = |sql: String| -> DjResult<Option<i64>> { Ok(catalog::read_one::<i64>(&sql, &[])?) };
        let rows = if readable {
            count(format!("SELECT pg_catalog.count(*) FROM {}", name.qualified()))?
        } else {
            None
        };
        let (make_module, make_sha256) = match make_of(&name) {
            Ok((module, sha256)) => (Some(module), Some(sha256)),
            Err(_) => (None, None),
        };
        let (mut remaining, mut errors, mut last_populated) = (None, None, None);
        if auto_populated(&name).is_ok() {
            let parents_readable = deps
                .parents(table)
                .into_iter()
                .try_fold(readable, |ok, (p, _)| Ok::<_, DjError>(ok && catalog::may_select(p)?))?;
            // (A Computed-named table without key parents has no key source: nothing remains.)
            if let (true, Ok(source)) = (parents_readable, source_of(name.clone(), None)) {
                remaining = Some(source.count(true)?);
            }
            let jobs = populate::jobs::jobs_table(table);
            if catalog::table_exists(&jobs.schema, &jobs.name)? && catalog::may_select(&jobs)? {
                errors = count(format!(
                    "SELECT pg_catalog.count(*) FROM {} WHERE status OPERATOR(pg_catalog.=) 'error'",
                    jobs.qualified()
                ))?;
            }
            if readable && host::describe(&name)?.has_job_version() {
                last_populated = catalog::read_one::<pgrx::datum::Timestamp>(
                    &format!("SELECT pg_catalog.max(\"_job_start_time\") FROM {}", name.qualified()),
                    &[],
                )?;
            }
        }
        out.push((
            name.schema.clone(),
            datajoint_core::naming::class_name_of(&name.name),
            tier.name().to_string(),
            name.name.clone(),
            rows,
            make_module,
            make_sha256,
            remaining,
            errors,
            last_populated,
        ));
    }
    Ok(out)
}

/// `dj.stale(table)`: keys of rows computed by another module than the table's current one.
#[pg_extern(stable, parallel_safe)]
fn stale(table: &str) -> SetOfIterator<'static, JsonRow> {
    const FN: &str = "dj.stale";
    let _pin = security::pin();
    let name = catalog::resolve(table).or_raise(FN);
    auto_populated(&name).or_raise(FN);
    let (_, sha256) = make_of(&name).or_raise(FN);
    let info = host::describe(&name).or_raise(FN);
    if !info.has_job_version() {
        return SetOfIterator::new(Vec::new());
    }
    let key: Vec<String> = info.key().iter().map(|c| datajoint_core::sql::ident(&c.name)).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {}",
        key.join(", "),
        name.qualified(),
        populate::stale_condition(&sha256),
        key.join(", ")
    );
    SetOfIterator::new(json_rows(&sql).or_raise(FN))
}

/// `dj.populate(table, restriction, max_calls, suppress_errors, order)`: runs the table's make
/// function once per missing key of its key source, each key in its own subtransaction (its
/// master and part rows are kept together or not at all). Returns how many keys were done, how
/// many failed (only with suppress_errors; they are recorded in the table's jobs table) and how
/// many remain.
#[pg_extern(volatile, parallel_unsafe)]
fn populate(
    table: &str,
    restriction: default!(Option<&str>, "NULL"),
    max_calls: default!(Option<i64>, "NULL"),
    suppress_errors: default!(bool, false),
    order: default!(&str, "'original'"),
    recompute_stale: default!(bool, false),
    workers: default!(Option<i32>, "NULL"),
) -> TableIterator<'static, (name!(done, i64), name!(errors, i64), name!(remaining, i64))> {
    const FN: &str = "dj.populate";
    let _pin = security::pin();
    let order = crate::make::source::order(order).or_raise(FN);
    if let Some(n) = max_calls.filter(|n| *n < 0) {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_calls is {n}"),
            "Pass a number of keys ≥ 0, or NULL for all.",
        )
        .raise(FN);
    }
    let (done, errors, remaining) = match workers {
        None => run(table, restriction, max_calls, suppress_errors, order, recompute_stale),
        Some(n) => run_in_pool(table, restriction, max_calls, suppress_errors, order, recompute_stale, n),
    }
    .or_raise(FN);
    TableIterator::once((done, errors, remaining))
}

fn run(
    table: &str,
    restriction: Option<&str>,
    max_calls: Option<i64>,
    suppress_errors: bool,
    order: Order,
    recompute_stale: bool,
) -> DjResult<(i64, i64, i64)> {
    let source = source_of(catalog::resolve(table)?, restriction)?;
    let name = source.name.clone();
    let (_, sha256) = make_of(&name)?;
    let prepared = host::prepared(&sha256)?;

    let scope = Scope::of(&*catalog::dependencies()?, &name);
    let _permit = PipelineWrite::begin("INSERT", &scope.writable())?;

    let info = host::describe(&name)?;
    if recompute_stale && info.has_job_version() {
        delete::delete_where(&name, &populate::stale_condition(&sha256))?;
    }

    let keys_sql = source.keys(true, order, max_calls);
    let parts = scope.parts.iter().map(host::describe).collect::<DjResult<Vec<_>>>()?;
    let session = Arc::new(Session::new(scope, info, parts, sha256));
    let total = count_rows(&keys_sql)?;
    let fresh = fresh_instance_of(&name)?;
    // SPI stays connected for the whole run (the kept plans and the cursor need it). The keys come
    // through a cursor, a batch at a time: memory stays flat however many keys there are. Its
    // snapshot is taken here (not read-only: it sees this transaction's own changes, such as
    // recompute_stale's deletes).
    unsafe { pg_sys::SPI_connect() };
    let plans = Rc::new(Plans::default());
    let result = plans.open_cursor(&keys_sql).and_then(|cursor| {
        let result = Run::new(session, &prepared, plans.clone(), cursor).and_then(|mut run| {
            run = run.with_fresh_instances(fresh);
            let settings = Settings { total: total as usize, suppress_errors, report_every: PROGRESS_EVERY };
            let outcome = populate::run(&mut run, settings);
            run.finish(outcome)
        });
        unsafe { pg_sys::SPI_cursor_close(cursor) };
        result
    });
    drop(plans);
    unsafe { pg_sys::SPI_finish() };
    let (done, errors) = result?;
    let remaining = source.count(true)?;
    Ok((done, errors, remaining))
}

/// `dj.populate(..., workers => n)`: the same run through the worker pool, waited for.
fn run_in_pool(
    table: &str,
    restriction: Option<&str>,
    max_calls: Option<i64>,
    suppress_errors: bool,
    order: Order,
    recompute_stale: bool,
    workers: i32,
) -> DjResult<(i64, i64, i64)> {
    let source = source_of(catalog::resolve(table)?, restriction)?;
    make_of(&source.name)?;
    // (The first worker deletes the stale rows: in this transaction they would stay for the workers.)
    let spec = worker::spec(
        &source,
        restriction,
        max_calls,
        suppress_errors,
        recompute_stale,
        order,
        workers,
        0,
        5,
    )?;
    let (done, errors) = worker::run_and_wait(spec, &source.name.qualified())?;
    Ok((done, errors, source.count(true)?))
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION dj.register_module(text, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION dj.unregister_module(text) FROM PUBLIC;
COMMENT ON FUNCTION dj.register_module(text, bytea) IS 'Registers a make function: a WebAssembly component of world datajoint:make/make; compiles it once and returns its sha256. Not executable by PUBLIC: grant EXECUTE to the roles that may add code.';
COMMENT ON FUNCTION dj.unregister_module(text) IS 'Removes a module name (registrant only); tables bound to one of its versions keep running it.';
COMMENT ON FUNCTION dj.set_make(text, text, boolean) IS 'Binds a Computed or Imported table to the code a module name holds now (by sha256; re-registering the name changes nothing until the owner binds again); with fresh_instance, every key gets a fresh instance of the code instead of one instance serving the keys of a run in turn; table owner only.';
COMMENT ON FUNCTION dj.key_source(text, text) IS 'The keys a populate would compute: the primary-key parents'' keys not yet in the table, optionally restricted.';
COMMENT ON FUNCTION dj.progress(text, text) IS 'How many keys of a Computed or Imported table remain, of how many (NULL for other tiers).';
COMMENT ON FUNCTION dj._pipeline_tables() IS 'Internal: the rows of the view dj.pipeline_tables.';
CREATE VIEW dj.pipeline_tables WITH (security_invoker = true) AS SELECT * FROM dj._pipeline_tables();
COMMENT ON VIEW dj.pipeline_tables IS 'Every DataJoint table: schema, class, tier, SQL name, rows, make function (module name and sha256), keys remaining to populate, failed keys (in its jobs table), last populated (newest _job_start_time). NULL where the querying role may not read.';
GRANT SELECT ON dj.pipeline_tables TO PUBLIC;
COMMENT ON FUNCTION dj.stale(text) IS 'Rows made by another version of the table''s make function (or by another client).';
COMMENT ON FUNCTION dj.populate(text, text, bigint, boolean, text, boolean, integer) IS 'Runs the table''s make function once per missing key as the calling role: in this session, one subtransaction per key, or with workers => n in the worker pool, one transaction per key, waited for; returns done, errors, remaining.';
"#,
    name = "populate_comments",
    requires = [
        register_module,
        unregister_module,
        set_make,
        key_source,
        progress,
        stale,
        populate,
        pipeline_tables
    ]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    const MISBEHAVE: &[u8] = include_bytes!("../../../udfs/components/misbehave.wasm");

    /// A Case/Outcome pipeline with the misbehave module as Outcome's make.
    fn pipeline(cases: &str) {
        Spi::run(
            "SELECT dj.declare('pt.Case', 'manual', E'case_id : int32\\n---\\nmode : varchar(16)\\nn : int64');
             SELECT dj.declare('pt.Outcome', 'computed', E'-> Case\\n---\\nvalue : int64');",
        )
        .unwrap();
        Spi::run_with_args("SELECT dj.register_module('misbehave', $1)", &[MISBEHAVE.into()]).unwrap();
        Spi::run("SELECT dj.set_make('pt.Outcome', 'misbehave')").unwrap();
        Spi::run(&format!("INSERT INTO pt.case VALUES {cases}")).unwrap();
    }

    fn populate(args: &str) -> (i64, i64, i64) {
        let row = Spi::get_three::<i64, i64, i64>(&format!("SELECT * FROM dj.populate('pt.Outcome'{args})"))
            .unwrap();
        (row.0.unwrap(), row.1.unwrap(), row.2.unwrap())
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn populate_fills_every_missing_key_once() {
        pipeline("(1, 'ok', 1), (2, 'ok', 2), (3, 'ok', 3)");
        assert_eq!(populate(", max_calls => 2"), (2, 0, 1));
        assert_eq!(populate(""), (1, 0, 0));
        assert_eq!(populate(""), (0, 0, 0));
        assert_eq!(count("SELECT sum(value)::int8 FROM pt.__outcome"), 12);
        let version =
            Spi::get_one::<String>("SELECT DISTINCT _job_version FROM pt.__outcome").unwrap().unwrap();
        let module = Spi::get_one::<String>("SELECT sha256 FROM dj.modules WHERE name = 'misbehave'")
            .unwrap()
            .unwrap();
        assert_eq!(version, module);
    }

    #[pg_test]
    fn a_failing_key_writes_nothing_and_others_go_on_with_suppress_errors() {
        pipeline("(1, 'partial', 1), (2, 'ok', 2), (3, 'trap', 0)");
        assert_eq!(populate(", suppress_errors => true"), (1, 2, 2));
        assert_eq!(count("SELECT count(*) FROM pt.__outcome"), 1);
        assert_eq!(count("SELECT count(*) FROM pt.\"~~outcome\" WHERE status = 'error'"), 2);
        let (remaining, total) = Spi::get_two::<i64, i64>("SELECT * FROM dj.progress('pt.Outcome')").unwrap();
        assert_eq!((remaining, total), (Some(2), Some(3)));
    }

    #[pg_test(
        error = "make of \"pt\".\"__outcome\" failed for key (case_id=1): make function returned an error: gave up after inserting"
    )]
    fn a_failing_key_is_an_error_without_suppress_errors() {
        pipeline("(1, 'partial', 1)");
        populate("");
    }

    #[pg_test(
        error = "make of \"pt\".\"__outcome\" failed for key (case_id=1): the make function of \"pt\".\"__outcome\" may not insert into \"pt\".\"case\""
    )]
    fn a_make_writes_only_its_target() {
        pipeline("(1, 'foreign-insert', 1)");
        populate("");
    }

    #[pg_test(
        error = "make of \"pt\".\"__outcome\" failed for key (case_id=1): make function stopped: guest ran past its time limit of 100 ms"
    )]
    fn an_endless_make_is_stopped() {
        pipeline("(1, 'loop', 1)");
        Spi::run("SET dj.make_timeout = 100").unwrap();
        populate("");
    }

    #[pg_test(error = "the component exports no function make")]
    fn registration_refuses_a_component_without_make() {
        Spi::run("SELECT dj.register_module('empty', convert_to('(component)', 'UTF8'))").unwrap();
    }

    #[pg_test]
    fn a_registered_module_is_compiled_once_for_all_backends() {
        Spi::run_with_args("SELECT dj.register_module('misbehave', $1)", &[MISBEHAVE.into()]).unwrap();
        assert_eq!(count("SELECT count(*) FROM dj.module_artifacts"), 1);
        // The same bytes again: the cached machine code is kept, not duplicated.
        Spi::run_with_args("SELECT dj.register_module('misbehave', $1)", &[MISBEHAVE.into()]).unwrap();
        assert_eq!(count("SELECT count(*) FROM dj.module_artifacts"), 1);
    }
}
