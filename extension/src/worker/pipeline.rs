//! A pipeline run's workers (`dj.populate_all`): every worker works on every table of the
//! pipeline. It visits the tables downstream first, each visit one reservation of keys and their
//! makes, so a key whose upstream rows are there is taken soon, without waiting for whole
//! upstream tables. A table's queue is refreshed (its missing keys added as pending) when the
//! tables upstream of it have made keys, at most every `REFRESH_EVERY` (and no more often than
//! `REFRESH_SHARE` of the time goes to refreshing), and once more when they
//! are done. A table is done when every table upstream of it is done, its last refresh saw
//! all their keys, and nothing of it is pending, being refreshed or being made.

use std::time::{Duration, Instant};

use datajoint_core::populate::{self, queue};

use super::pool::{self, PoolRun, Setup};
use super::slots::{self, Handle, Membership, Spec};
use super::txn::{self, begin, commit, identity, transaction_as};
use crate::catalog;
use crate::gucs;
use crate::make::Failure;
use crate::pipeline::writes::PipelineWrite;

/// Seconds between two refreshes of a table's queue while its upstream tables make keys.
const REFRESH_EVERY: f64 = 0.25;
/// How long a worker trusts that a table's queue it found empty stays empty (unless refreshed).
const RECHECK: Duration = Duration::from_millis(100);
/// A refresh scans the table's whole key source: the next waits this many times as long as the
/// last one took.
const REFRESH_SHARE: f64 = 5.0;

/// This worker's part of pipeline `first` (whose runs are `members`, in the pipeline's order).
pub(super) fn work(first: Handle, members: &[Handle]) -> Result<(), Failure> {
    let Some(head) = slots::get(first) else { return Ok(()) };
    let upstream = head.members.upstream;
    let mut specs = Vec::with_capacity(members.len());
    for m in members {
        let Some(s) = slots::get(*m) else { return Ok(()) };
        specs.push((s.spec, s.restriction()));
    }
    // Every table's code and statements, kept across the keys' transactions.
    begin();
    let as_role = identity(head.spec.role);
    let setups =
        specs.iter().map(|(spec, r)| Setup::new(spec, r.as_deref())).collect::<Result<Vec<_>, _>>()?;
    let mut runs = members
        .iter()
        .zip(&specs)
        .zip(&setups)
        .map(|((m, (spec, _)), setup)| PoolRun::open(*m, first, *spec, setup))
        .collect::<Result<Vec<_>, _>>()?;
    drop(as_role);
    commit();
    let pipeline = Pipeline { first, members, upstream: &upstream[..members.len()] };
    // Each table's last empty visit by this worker (its queue's refreshes then, and when): a
    // table is not visited again, for a reservation that finds nothing, until its queue was
    // refreshed or RECHECK passed.
    let mut empty: Vec<Option<(u64, Instant)>> = vec![None; members.len()];
    'work: loop {
        if slots::stopping(first) {
            break;
        }
        pipeline.refresh(&setups, &specs)?;
        let seen = slots::memberships(members);
        if seen.iter().all(|(_, m)| m.complete) {
            break;
        }
        let mut worked = false;
        for i in (0..members.len()).rev() {
            if seen[i].1.complete
                || empty[i].is_some_and(|(r, at)| r == seen[i].1.refreshes && at.elapsed() < RECHECK)
            {
                continue;
            }
            let refreshes = slots::update(members[i], |s| {
                s.membership.busy += 1;
                s.membership.refreshes
            })
            .unwrap_or(0);
            // The guard lets this table's make write its own tables only, for this visit.
            let permit = PipelineWrite::of_oids("INSERT", setups[i].writable.clone());
            let visited = runs[i].visit();
            drop(permit);
            slots::update(members[i], |s| s.membership.busy -= 1);
            match visited? {
                // This worker stopped (cancelled, or an error recorded in the run).
                None => break 'work,
                Some(0) => {
                    empty[i] = Some((refreshes, Instant::now()));
                    pipeline.complete_if_done(i, refreshes, &runs[i])?
                }
                Some(_) => {
                    empty[i] = None;
                    worked = true;
                    break;
                }
            }
        }
        if !worked {
            txn::wait_a_little(20);
        }
    }
    Ok(())
}

struct Pipeline<'a> {
    first: Handle,
    members: &'a [Handle],
    upstream: &'a [u16],
}

impl Pipeline<'_> {
    /// Member `i`'s upstream members: whether all are done, and how many keys they made.
    fn upstream_of(&self, i: usize, seen: &[(i64, Membership)]) -> (bool, i64) {
        let ups = (0..self.members.len()).filter(|j| self.upstream[i] & (1 << j) != 0);
        let complete = ups.clone().all(|j| seen[j].1.complete);
        (complete, ups.map(|j| seen[j].0).sum())
    }

    /// Refreshes the queues whose upstream tables made keys since their last refresh (at most
    /// every REFRESH_EVERY, and at once when those tables are done).
    fn refresh(&self, setups: &[Setup], specs: &[(Spec, Option<String>)]) -> Result<(), Failure> {
        for i in 0..self.members.len() {
            if self.upstream[i] == 0 {
                continue;
            }
            let seen = slots::memberships(self.members);
            let (ups_complete, ups_done) = self.upstream_of(i, &seen);
            let me = seen[i].1;
            if me.complete || me.refreshing || me.refreshed == ups_done {
                continue;
            }
            let every = REFRESH_EVERY.max(REFRESH_SHARE * me.refresh_took);
            if !ups_complete && slots::now() - me.refreshed_at < every {
                continue;
            }
            let claimed = slots::update(self.members[i], |s| {
                let m = &mut s.membership;
                let free = !m.refreshing && !m.complete;
                m.refreshing |= free;
                free
            }) == Some(true);
            if !claimed {
                continue;
            }
            let spec = &specs[i].0;
            let started = slots::get(self.members[i]).map_or(0.0, |s| s.started);
            let began = slots::now();
            let added = transaction_as(spec.role, || refill(&setups[i], spec, started));
            slots::update(self.members[i], |s| {
                s.membership.refreshing = false;
                if let Ok(n) = &added {
                    // The keys counted were committed before the refresh began: it saw their rows.
                    s.membership.refreshed = ups_done;
                    s.membership.refreshed_at = slots::now();
                    s.membership.refresh_took = s.membership.refreshed_at - began;
                    s.membership.refreshes += 1;
                    s.total += n;
                }
            });
            added?;
        }
        Ok(())
    }

    /// After a visit of member `i` found no key due (`refreshes`: the refreshes of its queue when
    /// the visit began): marks it done if it is, and ends its run (the first one ends with the
    /// pipeline).
    fn complete_if_done(&self, i: usize, refreshes: u64, run: &PoolRun) -> Result<(), Failure> {
        let seen = slots::memberships(self.members);
        let (ups_complete, ups_done) = self.upstream_of(i, &seen);
        let me = seen[i].1;
        let settled =
            |m: &Membership| m.busy == 0 && !m.refreshing && m.refreshes == refreshes && !m.complete;
        if !ups_complete || !settled(&me) || (self.upstream[i] != 0 && me.refreshed != ups_done) {
            return Ok(());
        }
        // A failed key scheduled for another attempt soon keeps the table open.
        if run.next_due()?.is_some_and(|due| due <= gucs::worker_idle_timeout().as_secs_f64()) {
            return Ok(());
        }
        let completed = slots::update(self.members[i], |s| {
            let done = settled(&s.membership);
            s.membership.complete |= done;
            done
        }) == Some(true);
        if completed && self.members[i] != self.first {
            pool::finish(self.members[i])?;
        }
        Ok(())
    }
}

/// Adds a pending row for each key of the table missing from it and from its queue, and puts the
/// keys that failed before the run (`started`) back to pending, as the run's first fill does:
/// how many keys it queued.
fn refill(setup: &Setup, spec: &Spec, started: f64) -> Result<i64, Failure> {
    let jobs = populate::jobs::jobs_table(&setup.source.name);
    let keys = setup.source.keys(true, pool::order_of(spec), None);
    let added = catalog::write_one::<i64>(
        &queue::refresh_sql(&jobs, &setup.source.key, &queue::unqueued_sql(&jobs, &setup.source.key, &keys)),
        &[spec.priority.into(), 0.0f64.into()],
    )?
    .unwrap_or(0);
    let retried = catalog::write_one::<i64>(
        &format!(
            "WITH r AS ({} RETURNING 1) SELECT pg_catalog.count(*) FROM r",
            queue::repend_errors_before_sql(&jobs, &setup.source.key, &keys)
        ),
        &[started.into()],
    )?
    .unwrap_or(0);
    Ok(added + retried)
}
