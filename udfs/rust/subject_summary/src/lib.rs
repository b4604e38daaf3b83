//! `SubjectSummary` make function: aggregates many upstream rows into one.
//!
//! ```text
//! demo.Subject(subject_id int32; species, sex)
//! demo.Recording(-> Session; duration float64, spike_count int64)       [imported]
//! demo.SubjectSummary(-> Subject; n_recordings int32, total_duration float64,
//!                     mean_duration float64)                             [computed]
//! ```
//!
//! The key is a subject; `fetch` restricts `Recording` by the attributes it shares with the key
//! (`subject_id`), so it returns every recording of every session of that subject.

use datajoint_make::{fetch, insert1, log, Key, Make, Query};

struct SubjectSummary;

impl Make for SubjectSummary {
    fn make(key: Key) -> Result<(), String> {
        let durations = fetch(Query::new("Recording").attributes(["duration"]))
            .iter()
            .map(|recording| recording.get::<f64>("duration"))
            .collect::<Result<Vec<f64>, String>>()?;
        // A subject without recordings has nothing to summarize yet: fail the key so that a later
        // populate retries it, rather than storing a summary that would soon be wrong.
        if durations.is_empty() {
            return Err(format!("subject {key} has no recordings yet"));
        }
        let total: f64 = durations.iter().sum();
        let n = durations.len();
        log::debug(format!("subject {key}: {n} recordings, {total} s"));
        let summary = key
            .with("n_recordings", i32::try_from(n).map_err(|_| "too many recordings")?)
            .with("total_duration", total)
            .with("mean_duration", total / n as f64);
        insert1("SubjectSummary", summary);
        Ok(())
    }
}

datajoint_make::export!(SubjectSummary);
