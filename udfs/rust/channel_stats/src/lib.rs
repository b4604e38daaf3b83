//! `ChannelStats` make function: aggregates many upstream rows into one.
//!
//! ```text
//! demo.Recording(-> Session; duration float64, spike_count int64)           [imported]
//! demo.Recording.Channel(-> master, channel int16; spikes int64)            [part]
//! demo.ChannelStats(-> Recording; n_channels int32, total_spikes int64,
//!                   mean_rate float64, max_rate float64)                   [computed]
//! ```
//!
//! The key is a recording; `fetch` restricts `Recording.Channel` by the attributes it shares with
//! the key, so it returns every channel of that recording (the parts of an ancestor are readable:
//! they were written together with their master).

use datajoint_make::{fetch, fetch1, insert1, log, Key, Make, Query};

struct ChannelStats;

impl Make for ChannelStats {
    fn make(key: Key) -> Result<(), String> {
        let duration: f64 = fetch1(Query::new("Recording").attributes(["duration"])).get("duration")?;
        let spikes = fetch(Query::new("Recording.Channel").attributes(["spikes"]).order_by(["channel"]))
            .iter()
            .map(|channel| channel.get::<i64>("spikes"))
            .collect::<Result<Vec<i64>, String>>()?;
        // A recording whose channels are not in yet has nothing to summarize: fail the key so
        // that a later populate retries it, rather than storing statistics that would be wrong.
        if spikes.is_empty() {
            return Err(format!("recording {key} has no channels yet"));
        }
        let total: i64 = spikes.iter().sum();
        let max = spikes.iter().copied().max().unwrap_or_default();
        let n = spikes.len();
        log::debug(format!("recording {key}: {n} channels, {total} spikes"));
        let stats = key
            .with("n_channels", i32::try_from(n).map_err(|_| "too many channels")?)
            .with("total_spikes", total)
            .with("mean_rate", total as f64 / n as f64 / duration)
            .with("max_rate", max as f64 / duration);
        insert1("ChannelStats", stats);
        Ok(())
    }
}

datajoint_make::export!(ChannelStats);
