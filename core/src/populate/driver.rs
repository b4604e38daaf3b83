//! The populate loop, the same for every host: keys come a batch at a time; each key another run
//! holds is skipped; each other key is made in its own transaction; a failure either stops the
//! run (the key and its error returned) or, with `suppress_errors`, is recorded and the run goes
//! on; a key another session made meanwhile is no failure; progress is reported now and then.
//! A host may hold the rows of made keys back and write a batch's rows together ([`KeyRun::flush`],
//! after each batch): a key whose rows then fail is a failed key like any other, and only its
//! rows are left out.

use std::time::{Duration, Instant};

use crate::make::{display_row, Row};

/// How the loop treats a failed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Cancel, statement timeout, shutdown: the run ends with the error as it is.
    Cancel,
    /// The key's row is there already (a unique violation): made meanwhile by another session
    /// if it exists now.
    Duplicate,
    /// The make failed for this key.
    Failure,
}

/// What a host does for the loop.
pub trait KeyRun {
    type Error;
    /// The next keys to consider (none at the end).
    fn next_batch(&mut self) -> Result<Vec<Row>, Self::Error>;
    /// Ends the run if the host was asked to stop (raises, in the extension).
    fn check_interrupts(&mut self);
    /// Whether this run makes `key` (no other run holds its bucket).
    fn claim(&mut self, key: &Row) -> bool;
    /// Makes `key` in its own transaction: kept when Ok, rolled back when Err.
    fn make(&mut self, key: &Row) -> Result<(), Self::Error>;
    fn class(&self, error: &Self::Error) -> Class;
    /// The error's message, for the run's summary.
    fn message(&self, error: &Self::Error) -> String;
    /// Whether `key`'s row is in the target now (committed by another session).
    fn made_meanwhile(&mut self, key: &Row) -> Result<bool, Self::Error>;
    /// Records the failure of `key` (the jobs table), outside the key's rolled-back transaction.
    fn record_failure(&mut self, key: &Row, error: &Self::Error, took: Duration) -> Result<(), Self::Error>;
    /// Progress, every `Settings::report_every`.
    fn report(&mut self, progress: &Progress);
    /// Writes the rows held back for the keys made since the last flush, if the host holds any
    /// back. Returns the keys whose rows could not be written, each with its error and the time
    /// its make took (their rows are not written; every other key's are). An error ends the run.
    fn flush(&mut self) -> Result<Vec<(Row, Self::Error, Duration)>, Self::Error> {
        Ok(Vec::new())
    }
}

/// How a run goes.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Keys the run expects (for the progress report).
    pub total: usize,
    /// Record failures and go on, rather than stop at the first.
    pub suppress_errors: bool,
    pub report_every: Duration,
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub done: i64,
    pub errors: i64,
    pub seen: usize,
    pub total: usize,
    pub elapsed: Duration,
}

impl Progress {
    /// `populate T: 10 done, 0 failed, 90 to go, 5 keys/s, about 18 s left`.
    pub fn describe(&self, target: &str) -> String {
        let rate = self.seen as f64 / self.elapsed.as_secs_f64().max(1e-9);
        let left = self.total.saturating_sub(self.seen);
        format!(
            "populate {target}: {} done, {} failed, {left} to go, {rate:.0} keys/s, about {:.0} s left",
            self.done,
            self.errors,
            left as f64 / rate
        )
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub done: i64,
    pub errors: i64,
    /// The first few failures, `(key): message`.
    pub first_failures: Vec<String>,
}

/// Failures a summary shows.
const SHOWN_FAILURES: usize = 3;

impl Summary {
    /// One warning for the failures of a run (the jobs table has them all), if any.
    pub fn warning(&self, target: &str, jobs: &str) -> Option<String> {
        if self.errors == 0 {
            return None;
        }
        let more = if self.errors as usize > self.first_failures.len() { "; ..." } else { "" };
        Some(format!(
            "populate {target}: {} key(s) failed, recorded in {jobs}: {}{more}",
            self.errors,
            self.first_failures.join("; ")
        ))
    }
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum Stop<E> {
    /// The host failed, or was cancelled: the error as it is.
    Error(E),
    /// A key failed (without `suppress_errors`).
    KeyFailed { key: Row, error: E },
}

impl<E> From<E> for Stop<E> {
    fn from(e: E) -> Self {
        Stop::Error(e)
    }
}

/// Runs every key `run` gives.
pub fn run<R: KeyRun>(run: &mut R, settings: Settings) -> Result<Summary, Stop<R::Error>> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut summary = Summary::default();
    let mut seen = 0usize;
    loop {
        let keys = run.next_batch()?;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            seen += 1;
            run.check_interrupts();
            // Another session populating this table holds the key's bucket: it makes the key.
            if !run.claim(&key) {
                continue;
            }
            let t0 = Instant::now();
            match run.make(&key) {
                Ok(()) => summary.done += 1,
                Err(error) => failed(run, &settings, &mut summary, key, error, t0.elapsed())?,
            }
            if last_report.elapsed() >= settings.report_every {
                last_report = Instant::now();
                run.report(&Progress {
                    done: summary.done,
                    errors: summary.errors,
                    seen,
                    total: settings.total,
                    elapsed: started.elapsed(),
                });
            }
        }
        // The batch's rows held back, written: a key whose rows fail was not done after all.
        for (key, error, took) in run.flush()? {
            summary.done -= 1;
            failed(run, &settings, &mut summary, key, error, took)?;
        }
    }
    Ok(summary)
}

/// A key that failed: the run ends (cancelled, or not suppressing errors), or the failure is
/// recorded; a key another session made meanwhile is no failure.
fn failed<R: KeyRun>(
    run: &mut R,
    settings: &Settings,
    summary: &mut Summary,
    key: Row,
    error: R::Error,
    took: Duration,
) -> Result<(), Stop<R::Error>> {
    match run.class(&error) {
        Class::Cancel => Err(Stop::Error(error)),
        // Made meanwhile by a session that committed after this run read its keys.
        Class::Duplicate if run.made_meanwhile(&key)? => Ok(()),
        _ if !settings.suppress_errors => Err(Stop::KeyFailed { key, error }),
        _ => {
            summary.errors += 1;
            run.record_failure(&key, &error, took)?;
            if summary.first_failures.len() < SHOWN_FAILURES {
                summary.first_failures.push(format!("({}): {}", display_row(&key), run.message(&error)));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::make::{Field, Value};

    /// A run over integer keys whose make fails for the keys in `fail` (with the class given).
    #[derive(Default)]
    struct Fake {
        batches: Vec<Vec<i64>>,
        fail: Vec<(i64, Class)>,
        held_elsewhere: Vec<i64>,
        made_elsewhere: Vec<i64>,
        made: Vec<i64>,
        recorded: Vec<i64>,
        interrupts: usize,
        /// Keys whose rows fail when flushed, and the keys held back since the last flush.
        fail_at_flush: Vec<(i64, Class)>,
        held: Vec<i64>,
        flushes: usize,
    }

    fn id(key: &Row) -> i64 {
        match key[0].value {
            Value::Int(i) => i,
            _ => unreachable!(),
        }
    }

    impl KeyRun for Fake {
        type Error = (i64, Class);
        fn next_batch(&mut self) -> Result<Vec<Row>, Self::Error> {
            if self.batches.is_empty() {
                return Ok(Vec::new());
            }
            let batch = self.batches.remove(0);
            Ok(batch.into_iter().map(|i| vec![Field { name: "id".into(), value: Value::Int(i) }]).collect())
        }
        fn check_interrupts(&mut self) {
            self.interrupts += 1;
        }
        fn claim(&mut self, key: &Row) -> bool {
            !self.held_elsewhere.contains(&id(key))
        }
        fn make(&mut self, key: &Row) -> Result<(), Self::Error> {
            match self.fail.iter().find(|(k, _)| *k == id(key)) {
                Some(e) => Err(*e),
                None => {
                    self.held.push(id(key));
                    Ok(())
                }
            }
        }
        fn class(&self, error: &Self::Error) -> Class {
            error.1
        }
        fn message(&self, error: &Self::Error) -> String {
            format!("key {} failed", error.0)
        }
        fn made_meanwhile(&mut self, key: &Row) -> Result<bool, Self::Error> {
            Ok(self.made_elsewhere.contains(&id(key)))
        }
        fn record_failure(&mut self, key: &Row, _: &Self::Error, _: Duration) -> Result<(), Self::Error> {
            self.recorded.push(id(key));
            Ok(())
        }
        fn report(&mut self, _: &Progress) {}
        fn flush(&mut self) -> Result<Vec<(Row, Self::Error, Duration)>, Self::Error> {
            self.flushes += 1;
            let mut failures = Vec::new();
            for k in std::mem::take(&mut self.held) {
                match self.fail_at_flush.iter().find(|(f, _)| *f == k) {
                    Some(e) => failures.push((
                        vec![Field { name: "id".into(), value: Value::Int(k) }],
                        *e,
                        Duration::ZERO,
                    )),
                    None => self.made.push(k),
                }
            }
            Ok(failures)
        }
    }

    fn settings(suppress_errors: bool) -> Settings {
        Settings { total: 0, suppress_errors, report_every: Duration::from_secs(3600) }
    }

    #[test]
    fn every_claimed_key_is_made_once_in_batches() {
        let mut f = Fake { batches: vec![vec![1, 2], vec![3]], held_elsewhere: vec![2], ..Fake::default() };
        let summary = run(&mut f, settings(false)).unwrap();
        assert_eq!(summary, Summary { done: 2, errors: 0, first_failures: vec![] });
        assert_eq!(f.made, vec![1, 3]);
        assert_eq!(f.interrupts, 3);
    }

    #[test]
    fn a_failure_stops_the_run_unless_suppressed() {
        let fail = vec![(2, Class::Failure), (3, Class::Failure), (4, Class::Failure), (5, Class::Failure)];
        let mut f = Fake { batches: vec![vec![1, 2, 3]], fail: fail.clone(), ..Fake::default() };
        match run(&mut f, settings(false)) {
            Err(Stop::KeyFailed { key, error }) => assert_eq!((id(&key), error), (2, (2, Class::Failure))),
            other => panic!("{other:?}"),
        }
        // Key 1 was made; the run ended before its batch was flushed (its statement fails).
        assert_eq!((f.made.clone(), f.held.clone()), (vec![], vec![1]));
        let mut f = Fake { batches: vec![vec![1, 2, 3, 4, 5, 6]], fail, ..Fake::default() };
        let summary = run(&mut f, settings(true)).unwrap();
        assert_eq!((summary.done, summary.errors), (2, 4));
        assert_eq!(f.recorded, vec![2, 3, 4, 5]);
        assert_eq!(
            summary.first_failures,
            vec!["(id=2): key 2 failed", "(id=3): key 3 failed", "(id=4): key 4 failed"]
        );
        assert_eq!(
            summary.warning("T", "J").unwrap(),
            "populate T: 4 key(s) failed, recorded in J: (id=2): key 2 failed; (id=3): key 3 failed; (id=4): key 4 failed; ..."
        );
    }

    #[test]
    fn cancel_ends_the_run_even_when_suppressing_and_duplicates_made_elsewhere_are_skipped() {
        let fail = vec![(1, Class::Duplicate), (2, Class::Duplicate), (3, Class::Cancel)];
        let mut f =
            Fake { batches: vec![vec![1, 2, 3, 4]], fail, made_elsewhere: vec![1], ..Fake::default() };
        match run(&mut f, settings(true)) {
            Err(Stop::Error(e)) => assert_eq!(e, (3, Class::Cancel)),
            other => panic!("{other:?}"),
        }
        // 1 was made by another session: no failure; 2 was not: a failure, recorded.
        assert_eq!(f.recorded, vec![2]);
        assert!(f.made.is_empty());
    }

    #[test]
    fn rows_that_fail_when_flushed_fail_their_keys_only() {
        let fail_at_flush = vec![(2, Class::Failure), (3, Class::Duplicate), (5, Class::Duplicate)];
        let mut f = Fake {
            batches: vec![vec![1, 2, 3], vec![4, 5, 6]],
            fail_at_flush: fail_at_flush.clone(),
            made_elsewhere: vec![5],
            ..Fake::default()
        };
        let summary = run(&mut f, settings(true)).unwrap();
        // 2 failed, 3 was a duplicate nobody else made (a failure), 5 was made meanwhile.
        assert_eq!((summary.done, summary.errors), (3, 2));
        assert_eq!((f.made.clone(), f.recorded.clone(), f.flushes), (vec![1, 4, 6], vec![2, 3], 2));
        // Without suppress_errors the first key failing at its flush ends the run.
        let mut f = Fake { batches: vec![vec![1, 2, 3], vec![4]], fail_at_flush, ..Fake::default() };
        match run(&mut f, settings(false)) {
            Err(Stop::KeyFailed { key, .. }) => assert_eq!(id(&key), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.flushes, 1);
    }

    #[test]
    fn progress_reads_as_a_rate_and_a_remaining_time() {
        let p = Progress { done: 10, errors: 1, seen: 11, total: 111, elapsed: Duration::from_secs(1) };
        assert_eq!(p.describe("T"), "populate T: 10 done, 1 failed, 100 to go, 11 keys/s, about 9 s left");
    }
}
