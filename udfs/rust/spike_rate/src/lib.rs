//! `SpikeRate` make function: the simplest shape, one upstream row in, one row out.
//!
//! ```text
//! demo.Recording(-> Session; duration float64, spike_count int64)      [imported]
//! demo.SpikeRate(-> Recording; mean_rate float64)                       [computed]
//! ```
//!
//! For each key, reads the key's recording and inserts its mean firing rate in spikes per second.

use datajoint_make::{fetch1, insert1, Key, Make, Query};

struct SpikeRate;

impl Make for SpikeRate {
    fn make(key: Key) -> Result<(), String> {
        // Restricted by the key: exactly the recording being made.
        let recording = fetch1(Query::new("Recording").attributes(["duration", "spike_count"]));
        let duration: f64 = recording.get("duration")?;
        let spikes: i64 = recording.get("spike_count")?;
        if duration <= 0.0 {
            return Err(format!("recording {key} has duration {duration}"));
        }
        // The key's attributes plus the computed one.
        insert1("SpikeRate", key.with("mean_rate", spikes as f64 / duration));
        Ok(())
    }
}

datajoint_make::export!(SpikeRate);
