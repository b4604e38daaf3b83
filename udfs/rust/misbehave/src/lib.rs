//! `misbehave`: a make function that does, on request, everything a make function should not.
//! The extension's tests use it to check that the host survives and reports each case.
//!
//! ```text
//! Case(case_id int32; mode varchar(16), n int64)      # upstream: what to do
//! Outcome(-> Case; value int64)                       # target
//! ```
//!
//! | mode | behaviour |
//! |---|---|
//! | `ok` | inserts `value = 2 n` |
//! | `err` | returns `Err("case <id> refused")` |
//! | `panic` | panics with `boom <id>` (a trap: wasm32 panics abort) |
//! | `trap` | executes `unreachable` |
//! | `loop` | spins forever (only fuel / the timeout stops it) |
//! | `bomb` | allocates and touches 16 MiB blocks forever (only the memory limit stops it) |
//! | `partial` | inserts, then returns an error: the insert must be rolled back |
//! | `dup` | inserts the same row twice (duplicate key) |
//! | `foreign-insert` | inserts into `Case`, which is not the target |
//! | `foreign-fetch` | fetches `Outcome`, the target itself, which is not an ancestor |
//! | `bad-attr` | inserts a row with an attribute `nope` that `Outcome` lacks |
//! | `bad-type` | inserts `value = 'text'` into an int64 |
//! | `log` | logs `case <id> says hi` at every level, inserts `value = n` |
//! | `stdout` | writes to stdout and stderr, inserts `value = n` |
//! | `sleep` | sleeps 5 ms (WASI clocks), inserts `value = n` |
//! | `busy` | computes for `n` ms of wall-clock time (CPU-bound), inserts `value = n` |
//! | `big` | fetches `Case` with limit 1, inserts `value = n` |
//! | `expr` | fetches a relation expression over `Case`, inserts `value = 2 n` computed by it |
//! | `foreign-expr` | fetches an expression that joins `Outcome`, the target, which is not readable |
//! | `bad-expr` | fetches a malformed expression |
//! | `fetch-all` | fetches every row of `Bulk` (an ancestor sharing no key attribute), inserts `value = rows` |
//! | `bad-date` | inserts `value` = a date 10⁸ days before 1970 (out of PostgreSQL's range) |
//! | `bad-time` | inserts `value` = a time of 100 hours |
//! | `bad-timestamp` | inserts `value` = a timestamp of −9·10¹⁸ µs |
//! | `nul-text` | inserts `value` = text with a NUL character |
//! | `nul-restriction` | fetches `Case` with a restriction holding a NUL character |
//! | `infinity` | inserts `value` = timestamp +infinity (`i64::MAX`), which PostgreSQL stores |
//! | `copy` | fetches the key's row of `Source` (an ancestor) and inserts its attributes into `Outcome` as they came |
//! | `parts` | inserts `value = n` and `n` rows into the part `Outcome.Detail` (`detail` 0..n), master and parts in one make |
//! | `object-forge` | reads an object by a reference it made up (not in any row it fetched) |
//! | `object-foreign` | uploads an object for `Case`, which is not the target |
//! | `object-expr` | computes a reference in a relation expression over `Case` and reads it |
//! | `count` | inserts `value` = the makes this instance has run, this one included (state kept across keys) |

use datajoint_make::{fetch, fetch1, insert1, log, objects, row, Key, Make, Query, Value};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};

struct Misbehave;

/// Makes this instance has run (kept across keys while the host keeps the instance).
static CALLS: AtomicI64 = AtomicI64::new(0);

impl Make for Misbehave {
    fn make(key: Key) -> Result<(), String> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let case = fetch1(Query::new("Case").attributes(["mode", "n"]));
        let mode: String = case.get("mode")?;
        let n: i64 = case.get("n")?;
        let id: i32 = key.get("case_id")?;
        let outcome = |value: i64| key.clone().with("value", value);

        match mode.as_str() {
            "ok" => insert1("Outcome", outcome(2 * n)),
            "count" => insert1("Outcome", outcome(CALLS.load(Ordering::Relaxed))),
            "err" => return Err(format!("case {id} refused")),
            "panic" => panic!("boom {id}"),
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => spin(),
            "bomb" => bomb(),
            "partial" => {
                insert1("Outcome", outcome(n));
                return Err("gave up after inserting".into());
            }
            "dup" => {
                insert1("Outcome", outcome(n));
                insert1("Outcome", outcome(n));
            }
            "foreign-insert" => insert1("Case", row! { "case_id" => id + 1000, "mode" => "ok", "n" => n }),
            "foreign-fetch" => {
                let rows = fetch("Outcome");
                return Err(format!("the host let me read my own target ({} rows)", rows.len()));
            }
            "expr" => {
                let twice: i64 = fetch1("proj(Case & 'n >= 0', 'twice = n * 2')").get("twice")?;
                insert1("Outcome", outcome(twice));
            }
            "foreign-expr" => {
                let rows = fetch("Case * Outcome");
                return Err(format!("the host let me join my own target ({} rows)", rows.len()));
            }
            "bad-expr" => {
                let rows = fetch("Case * (");
                return Err(format!("the host ran a malformed expression ({} rows)", rows.len()));
            }
            "bad-attr" => insert1("Outcome", outcome(n).with("nope", 1)),
            "bad-type" => insert1("Outcome", key.clone().with("value", "text")),
            "log" => {
                let message = format!("case {id} says hi");
                log::debug(&message);
                log::info(&message);
                log::notice(&message);
                log::warning(&message);
                insert1("Outcome", outcome(n));
            }
            "stdout" => {
                println!("to stdout");
                eprintln!("to stderr");
                insert1("Outcome", outcome(n));
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(5));
                insert1("Outcome", outcome(n));
            }
            "busy" => {
                busy(std::time::Duration::from_millis(n.max(0) as u64));
                insert1("Outcome", outcome(n));
            }
            "big" => {
                let rows = fetch(Query::new("Case").limit(1));
                if rows.len() != 1 {
                    return Err(format!("limit 1 returned {} rows", rows.len()));
                }
                insert1("Outcome", outcome(n));
            }
            "fetch-all" => {
                let rows = fetch("Bulk");
                insert1("Outcome", outcome(rows.len() as i64));
            }
            "bad-date" => insert1("Outcome", key.clone().with("value", Value::Date(-100_000_000))),
            "bad-time" => insert1("Outcome", key.clone().with("value", Value::Time(100 * 3_600_000_000))),
            "bad-timestamp" => {
                insert1("Outcome", key.clone().with("value", Value::Timestamp(-9_000_000_000_000_000_000)))
            }
            "nul-text" => insert1("Outcome", key.clone().with("value", "a\0b")),
            "nul-restriction" => {
                let rows = fetch(Query::new("Case").restrict("mode = 'a\0b'"));
                return Err(format!("the host ran a restriction with NUL ({} rows)", rows.len()));
            }
            "infinity" => insert1("Outcome", key.clone().with("value", Value::Timestamp(i64::MAX))),
            "copy" => {
                let source = fetch1("Source");
                let mut row = key.clone();
                for (name, value) in source.iter() {
                    if !key.contains(name) {
                        row.set(name, value.clone());
                    }
                }
                insert1("Outcome", row);
            }
            "parts" => {
                insert1("Outcome", outcome(n));
                for detail in 0..n {
                    insert1("Detail", key.clone().with("detail", detail as i32));
                }
            }
            "object-forge" => {
                let forged = r#"{"path": "_hash/secret/aaaaaaaaaaaaaaaaaaaaaaaaaa", "store": "local"}"#;
                objects::read(forged);
            }
            "object-expr" => {
                let forged = fetch1(Query::new(
                    "proj(Case, 'r = CAST(''{\"path\": \"_hash/secret/aaaaaaaaaaaaaaaaaaaaaaaaaa\", \"store\": \"local\"}'' AS jsonb)')",
                ));
                objects::read(&forged.reference("r")?);
            }
            "object-foreign" => {
                objects::put("Case", "mode", &key, None, b"x");
            }
            other => return Err(format!("case {id}: unknown mode {other:?}")),
        }
        Ok(())
    }
}

/// Loops forever; `black_box` keeps the optimizer from proving the loop has no effect.
fn spin() -> ! {
    let mut i = 0u64;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Computes until `took` has passed (checking the clock every few thousand steps).
fn busy(took: std::time::Duration) {
    let start = std::time::Instant::now();
    let mut x = 1u64;
    while start.elapsed() < took {
        for _ in 0..4096 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        }
    }
}

/// Allocates 16 MiB blocks forever, writing every page so the memory is really used, and never
/// frees them.
fn bomb() -> ! {
    let mut blocks = Vec::new();
    loop {
        let mut block = vec![0u8; 16 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        blocks.push(black_box(block));
    }
}

datajoint_make::export!(Misbehave);
