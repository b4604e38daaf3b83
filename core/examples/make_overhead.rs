//! P4: the per-key cost of a make call with a cached module — a fresh instance in a fresh store,
//! the call, two host calls (fetch1, insert1) and teardown; and of the same call on one instance
//! kept across keys (what a populate run does) — without any database work.
//!
//!     cargo run --release -p datajoint-core --example make_overhead [COMPONENT] [CALLS]
//!
//! COMPONENT defaults to udfs/components/misbehave.wasm, whose make for mode "ok" fetches one
//! row and inserts one; the host answers from memory.

use std::time::Instant;

use datajoint_core::make::{self, Database, Field, Level, ObjectInfo, Prepared, Query, Row, Value};
use datajoint_core::sandbox::{Cancel, Limits};

struct Memory {
    inserted: u64,
}

impl Database for Memory {
    type Error = String;

    fn log(&mut self, _level: Level, _message: String) {}

    fn fetch(&mut self, _query: Query, _one: bool, _budget: usize) -> Result<Vec<Row>, String> {
        Ok(vec![vec![
            Field { name: "mode".into(), value: Value::Text("ok".into()) },
            Field { name: "n".into(), value: Value::Int(21) },
        ]])
    }

    fn insert(&mut self, _table: String, rows: Vec<Row>) -> Result<u64, String> {
        self.inserted += rows.len() as u64;
        Ok(rows.len() as u64)
    }

    fn object_info(
        &mut self,
        _reference: String,
        _member: Option<String>,
        _budget: usize,
    ) -> Result<ObjectInfo, String> {
        Err("no objects here".into())
    }

    fn object_read(
        &mut self,
        _reference: String,
        _member: Option<String>,
        _offset: u64,
        _length: u32,
        _budget: usize,
    ) -> Result<Vec<u8>, String> {
        Err("no objects here".into())
    }

    fn upload_new(&mut self, _t: String, _a: String, _key: Row, _f: Option<String>) -> Result<u32, String> {
        Err("no objects here".into())
    }

    fn upload_write(&mut self, _upload: u32, _chunk: Vec<u8>) -> Result<(), String> {
        Err("no objects here".into())
    }

    fn upload_finish(&mut self, _upload: u32) -> Result<String, String> {
        Err("no objects here".into())
    }

    fn upload_drop(&mut self, _upload: u32) {}
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "udfs/components/misbehave.wasm".into());
    let calls: usize = args.next().map(|n| n.parse().expect("CALLS is a number")).unwrap_or(20_000);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));

    let t = Instant::now();
    let component = make::compile(&bytes).expect("a make component");
    let compile = t.elapsed();
    let artifact = make::serialize(&component).expect("serializable");
    let t = Instant::now();
    // SAFETY: the artifact was serialized just above by this engine.
    let component = unsafe { make::deserialize(&artifact) }.expect("deserializable");
    let deserialize = t.elapsed();
    let linker = make::linker::<Memory>().expect("linker");
    let prepared = Prepared::new(&linker, &component).expect("the world matches");

    let key = vec![Field { name: "case_id".into(), value: Value::Int(1) }];
    let limits = Limits::default();
    let mut db = Memory { inserted: 0 };
    // Warm up (the first call starts the epoch ticker and the WASI runtime).
    for _ in 0..100 {
        let (result, _, back) = prepared.call(db, &key, &limits, &Cancel::Never);
        result.map_err(|e| format!("{e:?}")).expect("make succeeds");
        db = back;
    }
    let rss_before = rss_kib();
    let t = Instant::now();
    for _ in 0..calls {
        let (result, _, back) = prepared.call(db, &key, &limits, &Cancel::Never);
        result.map_err(|e| format!("{e:?}")).expect("make succeeds");
        db = back;
    }
    let per_call = t.elapsed() / calls as u32;
    let rss_after = rss_kib();
    assert_eq!(db.inserted, (calls + 100) as u64);
    let mut instance = prepared.instance(db, &limits, &Cancel::Never);
    let t = Instant::now();
    for _ in 0..calls {
        let (result, _) = instance.call(&prepared, &key, &limits);
        result.map_err(|e| format!("{e:?}")).expect("make succeeds");
    }
    let per_reused_call = t.elapsed() / calls as u32;
    assert_eq!(instance.into_db().inserted, (2 * calls + 100) as u64);
    println!("component {path} ({} kB)", bytes.len() / 1000);
    println!(
        "  compile {:.1} ms, machine code {} kB, deserialize {:.2} ms",
        compile.as_secs_f64() * 1e3,
        artifact.len() / 1000,
        deserialize.as_secs_f64() * 1e3
    );
    println!(
        "  instantiate + make (2 host calls) + drop: {:.1} µs per key over {calls} calls",
        per_call.as_secs_f64() * 1e6
    );
    println!(
        "  make (2 host calls) on one instance kept across keys: {:.1} µs per key (target < 20 µs)",
        per_reused_call.as_secs_f64() * 1e6
    );
    println!("  resident memory {} KiB before the calls, {} KiB after", rss_before, rss_after);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
