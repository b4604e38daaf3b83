//! The contract's date and time values against PostgreSQL's ranges.
//!
//! The contract counts from the Unix epoch (days, microseconds); PostgreSQL from 2000-01-01 and
//! refuses values outside its ranges when reading them back (22008), so a value a guest sends is
//! checked before it is stored: a stored out-of-range value would make `SELECT` of its row and
//! `pg_dump` fail. Infinity (`±infinity`) is the extreme of each type, both ways.

/// Days between 1970-01-01 and 2000-01-01.
pub const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds between 1970-01-01 and 2000-01-01.
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// PostgreSQL's first valid date (4714-11-24 BC) and the day after its last, in its own days.
const DATE_MIN: i32 = -2_451_545;
const DATE_END: i32 = 2_145_031_949;
/// PostgreSQL's first valid timestamp (4714-11-24 00:00 BC) and the first after its last (µs).
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;
/// A time of day may be 24:00:00.
const TIME_MAX: i64 = 86_400_000_000;

/// A value PostgreSQL cannot store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutOfRange {
    Date,
    Time,
    Timestamp,
    /// A timestamp PostgreSQL stores that the contract cannot carry.
    ContractTimestamp,
}

impl OutOfRange {
    /// What PostgreSQL accepts, for messages.
    pub fn range(self) -> &'static str {
        match self {
            OutOfRange::Date => "dates from 4713-11-24 BC to 5874897-12-31 (or ±infinity)",
            OutOfRange::Time => "times from 00:00:00 to 24:00:00",
            OutOfRange::Timestamp => "timestamps from 4713-11-24 BC to 294276-12-31 (or ±infinity)",
            OutOfRange::ContractTimestamp => {
                "make functions receive timestamps up to 292277-12-31 (microseconds since 1970 in 64 bits)"
            }
        }
    }
}

/// A contract date (days since 1970-01-01; `i32::MIN`/`MAX` are ∓infinity) as PostgreSQL's.
pub fn date_to_pg(days: i32) -> Result<i32, OutOfRange> {
    if days == i32::MIN || days == i32::MAX {
        return Ok(days);
    }
    let d = days.checked_sub(PG_EPOCH_DAYS).ok_or(OutOfRange::Date)?;
    if (DATE_MIN..DATE_END).contains(&d) {
        Ok(d)
    } else {
        Err(OutOfRange::Date)
    }
}

/// PostgreSQL's date as the contract's.
pub fn date_from_pg(d: i32) -> i32 {
    if d == i32::MIN || d == i32::MAX {
        d
    } else {
        d.saturating_add(PG_EPOCH_DAYS)
    }
}

/// A contract timestamp (µs since 1970-01-01; `i64::MIN`/`MAX` are ∓infinity) as PostgreSQL's.
pub fn timestamp_to_pg(micros: i64) -> Result<i64, OutOfRange> {
    if micros == i64::MIN || micros == i64::MAX {
        return Ok(micros);
    }
    let t = micros.checked_sub(PG_EPOCH_MICROS).ok_or(OutOfRange::Timestamp)?;
    if (TIMESTAMP_MIN..TIMESTAMP_END).contains(&t) {
        Ok(t)
    } else {
        Err(OutOfRange::Timestamp)
    }
}

/// PostgreSQL's timestamp as the contract's; `None` for the last two millennia of PostgreSQL's
/// range (after 292277-12-31), which microseconds since 1970 in an i64 cannot reach.
pub fn timestamp_from_pg(t: i64) -> Option<i64> {
    if t == i64::MIN || t == i64::MAX {
        Some(t)
    } else {
        t.checked_add(PG_EPOCH_MICROS).filter(|&us| us != i64::MAX)
    }
}

/// A contract time of day (µs since midnight).
pub fn time_to_pg(micros: i64) -> Result<i64, OutOfRange> {
    if (0..=TIME_MAX).contains(&micros) {
        Ok(micros)
    } else {
        Err(OutOfRange::Time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extremes_postgres_accepts_pass_and_one_beyond_does_not() {
        // 4714-11-24 BC and 5874897-12-31, in days since 1970.
        assert_eq!(date_to_pg(DATE_MIN + PG_EPOCH_DAYS), Ok(DATE_MIN));
        assert_eq!(date_to_pg(DATE_MIN + PG_EPOCH_DAYS - 1), Err(OutOfRange::Date));
        assert_eq!(date_to_pg(DATE_END + PG_EPOCH_DAYS - 1), Ok(DATE_END - 1));
        assert_eq!(date_to_pg(DATE_END + PG_EPOCH_DAYS), Err(OutOfRange::Date));
        assert_eq!(date_to_pg(-100_000_000), Err(OutOfRange::Date));
        assert_eq!(timestamp_to_pg(-9_000_000_000_000_000_000), Err(OutOfRange::Timestamp));
        assert_eq!(timestamp_to_pg(TIMESTAMP_MIN + PG_EPOCH_MICROS), Ok(TIMESTAMP_MIN));
        assert_eq!(timestamp_to_pg(TIMESTAMP_MIN + PG_EPOCH_MICROS - 1), Err(OutOfRange::Timestamp));
        // PostgreSQL's last timestamp is beyond what the contract's i64 reaches from 1970.
        assert!(timestamp_to_pg(i64::MAX - 1).is_ok());
        assert_eq!(time_to_pg(TIME_MAX), Ok(TIME_MAX));
        assert_eq!(time_to_pg(100 * 3_600_000_000), Err(OutOfRange::Time));
        assert_eq!(time_to_pg(-1), Err(OutOfRange::Time));
    }

    #[test]
    fn infinities_and_ordinary_values_round_trip() {
        for d in [i32::MIN, i32::MAX, 0, -1, 19_000] {
            assert_eq!(date_from_pg(date_to_pg(d).unwrap()), d);
        }
        for t in [i64::MIN, i64::MAX, 0, -1, 1_700_000_000_000_000, i64::MAX - 1] {
            assert_eq!(timestamp_from_pg(timestamp_to_pg(t).unwrap()), Some(t));
        }
        // 294276-12-31: PostgreSQL stores it, the contract cannot carry it.
        assert_eq!(timestamp_from_pg(TIMESTAMP_END - 1), None);
    }
}
