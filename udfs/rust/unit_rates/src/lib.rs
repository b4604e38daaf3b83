//! `UnitRates` make function: a master row and its part rows, inserted together.
//!
//! ```text
//! demo.Probe(probe varchar; channels int16)                              [lookup]
//! demo.Session(-> Subject, session int16; -> Probe, recorded)            [manual]
//! demo.Recording(-> Session; duration float64, spike_count int64)        [imported]
//! demo.UnitRates(-> Recording; n_units int32)                            [computed]
//! demo.UnitRates.Unit(-> master, unit int32; rate float64)               [part]
//! ```
//!
//! The key (`subject_id`, `session`) does not contain `probe`: the probe is reached through
//! `Session`'s secondary foreign key. So the make reads the session's probe first and then
//! restricts `Probe` by it explicitly. All inserts belong to one subtransaction: if anything fails
//! after the master row was inserted, the master and its parts are discarded together.

use datajoint_make::{fetch1, insert, insert1, quote, row, Key, Make, Query};

/// At most this many units per recording (a probe may have hundreds of channels).
const MAX_UNITS: i64 = 8;

struct UnitRates;

impl Make for UnitRates {
    fn make(key: Key) -> Result<(), String> {
        let recording = fetch1(Query::new("Recording").attributes(["duration", "spike_count"]));
        let duration: f64 = recording.get("duration")?;
        let spikes: i64 = recording.get("spike_count")?;

        let probe: String = fetch1(Query::new("Session").attributes(["probe"])).get("probe")?;
        let channels: i64 = fetch1(
            Query::new("Probe").restrict(format!("probe = {}", quote(&probe))).attributes(["channels"]),
        )
        .get("channels")?;

        let n_units = channels.clamp(0, MAX_UNITS);
        insert1("UnitRates", key.clone().with("n_units", n_units));

        // A made-up spread of rates around the mean, so that the parts differ.
        let mean = spikes as f64 / duration / n_units.max(1) as f64;
        let units = (0..n_units).map(|unit| {
            row! { "unit" => unit, "rate" => mean * (1.0 + unit as f64 / 10.0) }
        });
        // The key's attributes are filled in by the host: the parts need only their own.
        let inserted = insert("UnitRates.Unit", units);
        debug_assert_eq!(inserted, n_units as u64);
        Ok(())
    }
}

datajoint_make::export!(UnitRates);
