//! `ChannelStats` make function: aggregates many upstream rows into one, in the database.
//!
//! ```text
//! demo.Recording(-> Session; duration float64, spike_count int64)           [imported]
//! demo.Recording.Channel(-> master, channel int16; spikes int64)            [part]
//! demo.ChannelStats(-> Recording; n_channels int32, total_spikes int64,
//!                   mean_rate float64, max_rate float64)                   [computed]
//! ```
//!
//! The query is a relation expression in the same language as SQL's `dj.rel(...)`: one row per
//! recording (restricted by the key, so exactly this one) with its channels counted and summed by
//! PostgreSQL. The parts of an ancestor are readable: they were written together with their master.

use datajoint_make::{fetch1, insert1, log, Key, Make, Query};

struct ChannelStats;

const SUMMARY: &str = "aggr(Recording, Recording.Channel, '...', 'n = count(channel)', \
     'total = CAST(coalesce(sum(spikes), 0) AS bigint)', 'peak = max(spikes)')";

impl Make for ChannelStats {
    fn make(key: Key) -> Result<(), String> {
        let summary = fetch1(Query::new(SUMMARY));
        let n: i64 = summary.get("n")?;
        // A recording whose channels are not in yet has nothing to summarize: fail the key so
        // that a later populate retries it, rather than storing statistics that would be wrong.
        if n == 0 {
            return Err(format!("recording {key} has no channels yet"));
        }
        let duration: f64 = summary.get("duration")?;
        let total: i64 = summary.get("total")?;
        let peak: i64 = summary.get("peak")?;
        log::debug(format!("recording {key}: {n} channels, {total} spikes"));
        let stats = key
            .with("n_channels", i32::try_from(n).map_err(|_| "too many channels")?)
            .with("total_spikes", total)
            .with("mean_rate", total as f64 / n as f64 / duration)
            .with("max_rate", peak as f64 / duration);
        insert1("ChannelStats", stats);
        Ok(())
    }
}

datajoint_make::export!(ChannelStats);
