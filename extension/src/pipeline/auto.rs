//! Populate on insert (`dj.auto_populate`): turning it on and off for a table, and the trigger on
//! each of the table's key parents that queues the keys new rows complete (or drops the pending
//! keys of deleted rows) in the writing transaction, as the role that turned it on. The runs that
//! make the queued keys are the worker pool's (`worker::auto`).

use datajoint_core::dependencies::Table;
use datajoint_core::populate::{self, auto, queue, Order};
use datajoint_core::sql;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{PgBuiltInOids, PgOid, PgSqlErrorCode};

use crate::catalog;
use crate::error::{DjError, DjResult};
use crate::gucs;
use crate::make::in_subtransaction;
use crate::make::source::{make_of, source_of};
use crate::pipeline::tables;
use crate::security;
use crate::worker::auto::{reschedule, want, Wanted};
use crate::worker::slots;

/// A table's auto populate: the role its makes run as, and what its runs ask for.
pub struct Config {
    pub target: pg_sys::Oid,
    pub role: pg_sys::Oid,
    pub role_name: String,
    pub workers: i32,
    pub priority: i32,
    pub retries: i32,
    pub timeout_ms: i32,
    pub fuel_millions: i32,
    pub memory_kb: i32,
}

impl Config {
    fn wanted(&self, added: i64) -> Wanted {
        Wanted {
            target: self.target.to_u32(),
            role: self.role.to_u32(),
            workers: self.workers as u32,
            priority: self.priority,
            retries: self.retries as u32,
            timeout_ms: self.timeout_ms,
            fuel_millions: self.fuel_millions,
            memory_kb: self.memory_kb,
            added,
        }
    }
}

/// The auto-populated tables (`a`) with their tables (`c`) and roles (`r`): what every reader of
/// the catalog joins.
pub const AUTO_TABLES: &str = "FROM dj._auto_populate a \
     JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) a.schema_name \
     JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid \
          AND c.relname OPERATOR(pg_catalog.=) a.table_name \
     JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) a.role_name";
/// What an auto run asks for, after the table's and the role's oids.
pub const CONFIG_COLUMNS: &str =
    "a.workers, a.priority, a.retries, a.make_timeout, a.make_fuel, a.make_memory_limit";

/// The auto populate of `target`, if it is on.
pub fn config_of(target: &Table) -> DjResult<Option<Config>> {
    Ok(Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT c.oid, r.oid, a.role_name::pg_catalog.text, {CONFIG_COLUMNS} {AUTO_TABLES} \
                 WHERE a.schema_name OPERATOR(pg_catalog.=) $1 AND a.table_name OPERATOR(pg_catalog.=) $2"
            ),
            Some(1),
            &[target.schema.as_str().into(), target.name.as_str().into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let r = rows.first();
        Ok(Some(Config {
            target: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            role: r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
            role_name: r.get::<String>(3)?.unwrap_or_default(),
            workers: r.get::<i32>(4)?.unwrap_or(1),
            priority: r.get::<i32>(5)?.unwrap_or(5),
            retries: r.get::<i32>(6)?.unwrap_or(0),
            timeout_ms: r.get::<i32>(7)?.unwrap_or(0),
            fuel_millions: r.get::<i32>(8)?.unwrap_or(0),
            memory_kb: r.get::<i32>(9)?.unwrap_or(0),
        }))
    })?)
}

/// The key parents of `target` (the tables its key source joins), each with its (child
/// attribute, parent attribute) pairs.
fn key_parents(target: &Table) -> DjResult<Vec<(Table, Vec<(String, String)>)>> {
    let deps = catalog::dependencies()?;
    Ok(deps
        .parents(target)
        .into_iter()
        .filter(|(_, r)| r.primary)
        .map(|(p, r)| (p.clone(), r.attributes.clone()))
        .collect())
}

fn invalid(what: String, hint: &str) -> DjError {
    DjError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, what, hint)
}

/// Whether the caller may change the auto populate of `target`, turned on by `role` (None: off):
/// a member of that role, or of the table's owner.
fn may_change(target: &Table, role: Option<&str>) -> DjResult<bool> {
    let owner = catalog::read_one::<bool>(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[catalog::oid_of(target)?.into()],
    )?
    .unwrap_or(false);
    let member = match role {
        Some(r) => catalog::read_one::<bool>(
            "SELECT pg_catalog.pg_has_role(r.oid, 'USAGE') FROM pg_catalog.pg_roles r \
             WHERE r.rolname OPERATOR(pg_catalog.=) $1",
            &[r.into()],
        )?
        .unwrap_or(true),
        None => false,
    };
    Ok(owner || member)
}

/// `dj.auto_populate(table, true, ...)`: from now on the target's keys are queued as its key
/// parents' rows are inserted, and made by the pool as the caller. The keys missing now are
/// queued at once; the run starts when this transaction commits. Returns them.
pub fn enable(
    table: &str,
    workers: i32,
    priority: i32,
    retries: i32,
    every: Option<pgrx::datum::Interval>,
) -> DjResult<i64> {
    let target = catalog::resolve(table)?;
    let source = source_of(target.clone(), None)?;
    make_of(&target)?;
    crate::worker::check_settings(workers, retries, priority)?;
    if let Some(every) = every {
        let seconds = catalog::read_one::<f64>(
            "SELECT pg_catalog.date_part('epoch', $1::pg_catalog.interval)::pg_catalog.float8",
            &[every.into()],
        )?
        .unwrap_or(0.0);
        if seconds < 1.0 {
            return Err(invalid(
                format!("every is {seconds} s"),
                "A schedule refreshes the table's queue at most every second: pass an interval of 1 second or more, or NULL for none.",
            ));
        }
    }
    if !slots::available() {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "auto populate needs the datajoint library preloaded",
            crate::preload::HINT,
        ));
    }
    let qualified = target.qualified();
    let may_insert = catalog::read_one::<bool>(
        "SELECT pg_catalog.has_table_privilege($1::pg_catalog.regclass, 'INSERT')",
        &[qualified.as_str().into()],
    )?;
    let earlier = config_of(&target)?;
    if may_insert != Some(true)
        || (earlier.is_some() && !may_change(&target, earlier.as_ref().map(|c| c.role_name.as_str()))?)
    {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to auto populate {qualified}"),
            "Its makes run as the role that turns auto populate on, which needs INSERT on the table; \
             once on, only a member of that role or of the table's owner may change it.",
        ));
    }
    tables::ensure_jobs_table(&target)?;
    let caller = security::current_role();
    security::as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO dj._auto_populate (schema_name, table_name, role_name, workers, priority, retries, \
                                            make_timeout, make_fuel, make_memory_limit, every, scheduled) \
             VALUES ($1, $2, $9, $3, $4, $5, $6, $7, $8, $10, NULL) \
             ON CONFLICT (schema_name, table_name) DO UPDATE SET role_name = EXCLUDED.role_name, \
                 workers = EXCLUDED.workers, priority = EXCLUDED.priority, retries = EXCLUDED.retries, \
                 make_timeout = EXCLUDED.make_timeout, make_fuel = EXCLUDED.make_fuel, \
                 make_memory_limit = EXCLUDED.make_memory_limit, every = EXCLUDED.every, \
                 scheduled = NULL, enabled = pg_catalog.now()",
            &[
                target.schema.as_str().into(),
                target.name.as_str().into(),
                workers.into(),
                priority.into(),
                retries.into(),
                gucs::MAKE_TIMEOUT.get().into(),
                gucs::MAKE_FUEL.get().into(),
                gucs::MAKE_MEMORY_LIMIT.get().into(),
                caller.as_str().into(),
                every.into(),
            ],
        )?;
        Ok(())
    })?;
    // The triggers, as the caller: creating a trigger on a parent needs its TRIGGER privilege.
    let args = format!("{}, {}", sql::literal(&target.schema), sql::literal(&target.name));
    for (parent, _) in key_parents(&target)? {
        for (op, event, rows) in [("insert", "INSERT", "NEW"), ("delete", "DELETE", "OLD")] {
            Spi::run(&format!(
                "CREATE OR REPLACE TRIGGER {} AFTER {event} ON {} REFERENCING {rows} TABLE AS {} \
                 FOR EACH STATEMENT EXECUTE FUNCTION dj._auto_populate_trigger({args})",
                sql::ident(&auto::trigger_name(&target, op)),
                parent.qualified(),
                sql::ident(if op == "insert" { auto::NEW_ROWS } else { auto::OLD_ROWS }),
            ))?;
        }
    }
    // The keys missing now.
    let jobs = populate::jobs::jobs_table(&target);
    let added = catalog::write_one::<i64>(
        &queue::refresh_sql(&jobs, &source.key, &source.keys(true, Order::Original, None)),
        &[priority.into(), 0.0f64.into()],
    )?
    .unwrap_or(0);
    let config = config_of(&target)?.ok_or_else(|| {
        DjError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the auto populate just recorded is gone", "")
    })?;
    want(config.wanted(added.max(1)));
    reschedule();
    Ok(added)
}

/// `dj.auto_populate(table, false)`: no more keys are queued on insert and the table's auto run
/// stops (its keys stay queued for the next populate). Whether it was on.
pub fn disable(table: &str) -> DjResult<bool> {
    let target = catalog::resolve(table)?;
    let Some(config) = config_of(&target)? else { return Ok(false) };
    if !may_change(&target, Some(&config.role_name))? {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to turn off the auto populate of {}", target.qualified()),
            format!("Only a member of {} (who turned it on) or of the table's owner may.", config.role_name),
        ));
    }
    let parents = key_parents(&target)?;
    security::as_extension_owner(|| {
        Spi::run_with_args(
            "DELETE FROM dj._auto_populate WHERE schema_name OPERATOR(pg_catalog.=) $1 \
             AND table_name OPERATOR(pg_catalog.=) $2",
            &[target.schema.as_str().into(), target.name.as_str().into()],
        )?;
        // The extension's own triggers (dropping needs the parent's ownership).
        for (parent, _) in &parents {
            for op in ["insert", "delete"] {
                Spi::run(&format!(
                    "DROP TRIGGER IF EXISTS {} ON {}",
                    sql::ident(&auto::trigger_name(&target, op)),
                    parent.qualified()
                ))?;
            }
        }
        Ok(())
    })?;
    crate::worker::cancel_auto(config.target.to_u32());
    reschedule();
    Ok(true)
}

thread_local! {
    /// The triggers' statements, planned once per backend (a pool worker fires them for every key
    /// it makes upstream of an auto-populated table). The transition table they read is looked up
    /// by name at each execution, as PL/pgSQL's kept plans do.
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Plans a few dozen statements at most.
const KEPT_PLANS: usize = 64;

fn kept_plan(client: &SpiClient<'_>, sql: &str, insert: bool) -> Result<Rc<OwnedPreparedStatement>, DjError> {
    if let Some(plan) = PLANS.with(|p| p.borrow().get(sql).cloned()) {
        return Ok(plan);
    }
    let types = if insert {
        vec![PgOid::BuiltIn(PgBuiltInOids::INT4OID), PgOid::BuiltIn(PgBuiltInOids::FLOAT8OID)]
    } else {
        vec![]
    };
    let plan = Rc::new(client.prepare_mut(sql, &types)?.keep());
    PLANS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= KEPT_PLANS {
            p.clear();
        }
        p.insert(sql.to_string(), plan.clone());
    });
    Ok(plan)
}

/// The trigger on a key parent of an auto-populated table (`args`: its schema and name): queues
/// the keys the inserted rows complete, or drops the pending keys of the deleted rows, as the
/// role that turned auto populate on. A failure (that role lost a privilege, say) is a WARNING,
/// not the writer's error: the keys are then queued by the table's next populate.
pub fn on_parent_write(
    data: *mut pg_sys::TriggerData,
    parent: pg_sys::Oid,
    args: &[String],
    insert: bool,
) -> DjResult<()> {
    let [schema, name] = args else { return Ok(()) };
    let target = Table::new(schema.clone(), name.clone());
    let Some(config) = config_of(&target)? else { return Ok(()) };
    let Some(parent) = catalog::table_name_of(parent)? else { return Ok(()) };
    let Some((_, pairs)) = key_parents(&target)?.into_iter().find(|(p, _)| *p == parent) else {
        return Ok(());
    };
    let source = source_of(target.clone(), None)?;
    let jobs = populate::jobs::jobs_table(&target);
    let sql = if insert {
        auto::keys_of_rows(&source.sql, &target, &source.key, &pairs, auto::NEW_ROWS)
            .map(|keys| queue::refresh_sql(&jobs, &source.key, &keys))
    } else {
        auto::drop_pending_sql(&jobs, &source.key, &pairs, auto::OLD_ROWS)
    };
    let Some(sql) = sql else { return Ok(()) };
    let outcome = Spi::connect_mut(|client| {
        // SAFETY: the trigger's own data, for this SPI connection's statements.
        unsafe { pg_sys::SPI_register_trigger_data(data) };
        security::as_role(config.role, || {
            in_subtransaction(|| {
                let args = if insert { vec![config.priority.into(), 0.0f64.into()] } else { vec![] };
                let plan = kept_plan(client, &sql, insert)?;
                Ok(client.update(&*plan, None, &args)?.first().get::<i64>(1)?.unwrap_or(0))
            })
        })
    });
    match outcome {
        Ok(added) if insert && added > 0 => want(config.wanted(added)),
        Ok(_) => {}
        Err(failure) => {
            if crate::interrupts::stop_requested() {
                pgrx::check_for_interrupts!();
            }
            let message = failure.parts().1;
            pgrx::warning!(
                "auto populate of {} could not {} keys as {}: {message}",
                target.qualified(),
                if insert { "queue" } else { "drop" },
                config.role_name
            );
        }
    }
    Ok(())
}
