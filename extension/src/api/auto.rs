//! Populate on insert: `dj.auto_populate(table, enabled, ...)`, the trigger it puts on the
//! table's key parents, and the view `dj.auto_populated`.

use pgrx::prelude::*;

use crate::error::{DjResult, OrRaise};
use crate::pipeline::auto;
use crate::security;

/// `dj.auto_populate(table, enabled, workers, priority, retries, every)`: with `enabled` (the
/// default), an insert into any of the table's key parents queues the keys it completes as
/// pending jobs, in the inserting transaction, and the worker pool makes them after its commit
/// (as the caller, with the caller's make limits); a deleted parent row drops its queued keys.
/// The keys missing now are queued at once. With `every`, the table's queue is also refreshed on
/// that schedule (missing keys queued, failed keys tried again), as a populate run would. Returns
/// the keys queued (0 when turning it off).
#[pg_extern(volatile, parallel_unsafe)]
fn auto_populate(
    table: &str,
    enabled: default!(bool, true),
    workers: default!(i32, 1),
    priority: default!(i32, 5),
    retries: default!(i32, 0),
    every: default!(Option<pgrx::datum::Interval>, "NULL"),
) -> i64 {
    let _pin = security::pin();
    let out: DjResult<i64> = if enabled {
        auto::enable(table, workers, priority, retries, every)
    } else {
        auto::disable(table).map(|_| 0)
    };
    out.or_raise("dj.auto_populate")
}

/// The trigger of a key parent of an auto-populated table (arguments: the table's schema and
/// name), after INSERT and after DELETE, per statement, with the transition table.
#[pg_trigger(sql = r#"
CREATE FUNCTION dj."_auto_populate_trigger"() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'auto_populate_trigger_wrapper';
"#)]
fn auto_populate_trigger<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let _pin = security::pin();
    let insert = trigger.event().fired_by_insert();
    let args = trigger.extra_args()?;
    let parent = trigger.relid()?;
    let data = trigger.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
    auto::on_parent_write(data, parent, &args, insert).or_raise("dj._auto_populate_trigger");
    Ok(None)
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.auto_populate(text, boolean, integer, integer, integer, interval) IS 'Populate on insert: with enabled (the default), inserts into the table''s key parents queue the keys they complete as pending jobs in the inserting transaction and the worker pool makes them after its commit, as the caller; deleted parent rows drop their queued keys; with every, the queue is also refreshed on that schedule (missing keys queued, failed keys tried again). Queues the keys missing now and returns how many (0 when turning it off).';
COMMENT ON FUNCTION dj._auto_populate_trigger() IS 'Internal: the trigger dj.auto_populate puts on a table''s key parents (arguments: the table''s schema and name).';
"#,
    name = "auto_populate_comments",
    requires = [auto_populate, auto_populate_trigger],
);
