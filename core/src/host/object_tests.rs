//! A make function's objects through the host, against the in-memory database of `tests`: what
//! a guest may read (only references it fetched or objects it uploaded), in what pieces, and what
//! it may upload (its target and parts, rows of its key), spooled past memory.

use super::tests::Memory;
use super::*;
use crate::make::Field;

const TRACE: &str = "_hash/t/abcdefghijklmnopqrstuvwxyz";

fn reference(path: &str) -> String {
    format!(r#"{{"hash": null, "path": "{path}", "schema": "t", "store": "local", "size": 10}}"#)
}

fn field(name: &str, value: Value) -> Field {
    Field { name: name.into(), value }
}

/// A host for key case_id=1 of Outcome (part Outcome.Part), which may read Case and Recording;
/// Recording's row references TRACE, which holds 0..=9.
fn host() -> MakeHost<Memory> {
    let mut memory = Memory::new(vec![]);
    memory.rows.insert(
        "\"t\".\"recording\"".into(),
        vec![vec![field("rec", Value::Int(5)), field("trace", Value::Json(reference(TRACE)))]],
    );
    memory.objects.insert((Some("local".into()), TRACE.into()), (0u8..10).collect());
    memory.objects.insert((Some("local".into()), format!("{TRACE}/inner/a.bin")), vec![7; 3]);
    let target = memory.describe(&Table::new("t", "__outcome")).unwrap();
    let part = memory.describe(&Table::new("t", "__outcome__part")).unwrap();
    let scope = Scope {
        target: target.table.clone(),
        parts: vec![part.table.clone()],
        readable: vec![Table::new("t", "case"), Table::new("t", "recording")],
    };
    MakeHost {
        session: Arc::new(Session::new(scope, target, vec![part], "sha".into())),
        backend: memory,
        key: vec![field("case_id", Value::Int(1))],
        started: Instant::now(),
        started_at: 0,
        objects: Default::default(),
        prefetched: Default::default(),
    }
}

fn fetch_recording(h: &mut MakeHost<Memory>) {
    let q = Query {
        relation: "Recording".into(),
        restrictions: vec![],
        attributes: vec![],
        order_by: vec![],
        limit: None,
    };
    Database::fetch(h, q, false, usize::MAX).unwrap();
}

fn read(
    h: &mut MakeHost<Memory>,
    r: &str,
    member: Option<&str>,
    offset: u64,
    length: u32,
) -> Result<Vec<u8>, HostError> {
    Database::object_read(h, r.into(), member.map(str::to_string), offset, length, 1 << 30)
}

#[test]
fn only_fetched_references_are_read_in_ranges() {
    let mut h = host();
    let e = read(&mut h, &reference(TRACE), None, 0, 4).unwrap_err();
    assert_eq!(e.kind, Kind::Privilege, "{e:?}");
    assert!(e.message.contains("did not fetch a reference"), "{}", e.message);

    fetch_recording(&mut h);
    assert_eq!(read(&mut h, &reference(TRACE), None, 0, 4).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(read(&mut h, &reference(TRACE), None, 8, 100).unwrap(), vec![8, 9]);
    assert_eq!(read(&mut h, &reference(TRACE), None, 10, 4).unwrap(), Vec::<u8>::new());
    assert_eq!(read(&mut h, &reference(TRACE), None, u64::MAX, 4).unwrap(), Vec::<u8>::new());
    // The reference as text may differ (spacing, field order): what counts is its store and path.
    let reordered = format!(r#"{{"store":"local","path":"{TRACE}"}}"#);
    assert_eq!(read(&mut h, &reordered, None, 0, 1).unwrap(), vec![0]);

    // A made-up path, another store, a path out of the store, garbage.
    let other = read(&mut h, &reference("_hash/t/zzzzzzzzzzzzzzzzzzzzzzzzzz"), None, 0, 1).unwrap_err();
    assert_eq!(other.kind, Kind::Privilege);
    let elsewhere = format!(r#"{{"store":"s3","path":"{TRACE}"}}"#);
    assert_eq!(read(&mut h, &elsewhere, None, 0, 1).unwrap_err().kind, Kind::Privilege);
    assert_eq!(read(&mut h, &reference("../etc/passwd"), None, 0, 1).unwrap_err().kind, Kind::Value);
    assert_eq!(read(&mut h, "not json", None, 0, 1).unwrap_err().kind, Kind::Value);

    // Too much at once, or more than the guest's memory has left.
    let e = read(&mut h, &reference(TRACE), None, 0, MAX_READ + 1).unwrap_err();
    assert_eq!(e.kind, Kind::Value);
    let e = Database::object_read(&mut h, reference(TRACE), None, 0, 8, 4).unwrap_err();
    assert_eq!(e.kind, Kind::Memory);
}

#[test]
fn members_of_a_fetched_folder_stay_inside_it() {
    let mut h = host();
    fetch_recording(&mut h);
    assert_eq!(read(&mut h, &reference(TRACE), Some("inner/a.bin"), 0, 10).unwrap(), vec![7; 3]);
    for bad in ["../x", "/etc/passwd", "inner/../../x", ""] {
        let e = read(&mut h, &reference(TRACE), Some(bad), 0, 1).unwrap_err();
        assert_eq!(e.kind, Kind::Value, "{bad}: {e:?}");
    }
    let e = read(&mut h, &reference(TRACE), Some("missing"), 0, 1).unwrap_err();
    assert!(e.message.contains("is not in its store"), "{}", e.message);

    let info = Database::object_info(&mut h, reference(TRACE), None, usize::MAX).unwrap();
    assert_eq!((info.store.as_str(), info.size, info.is_dir), ("local", 10, false));
}

#[test]
fn a_folder_object_lists_its_members_from_its_manifest() {
    let mut h = host();
    let folder = "_schema/t/recording/rec=5/trace_abcd";
    h.backend.rows.insert(
        "\"t\".\"recording\"".into(),
        vec![vec![field("rec", Value::Int(5)), field("trace", Value::Json(reference(folder)))]],
    );
    let manifest =
        r#"{"files": [{"path": "a.bin", "size": 3}, {"path": "d/b.bin", "size": 2}], "total_size": 5}"#;
    h.backend.objects.insert((Some("local".into()), format!("{folder}.manifest.json")), manifest.into());
    fetch_recording(&mut h);
    let e = Database::object_info(&mut h, reference(folder), None, 100).unwrap_err();
    assert_eq!(e.kind, Kind::Memory, "a manifest is charged to the guest's memory");
    let info = Database::object_info(&mut h, reference(folder), None, usize::MAX).unwrap();
    assert!(info.is_dir);
    assert_eq!(info.size, 5);
    assert_eq!(info.members, vec!["a.bin".to_string(), "d/b.bin".into()]);
}

fn upload(h: &mut MakeHost<Memory>, table: &str, attribute: &str, key: Row) -> Result<u32, HostError> {
    Database::upload_new(h, table.into(), attribute.into(), key, None)
}

#[test]
fn uploads_go_to_the_target_and_its_parts_for_rows_of_the_key() {
    let mut h = host();
    // Not the target's or a part's: refused before anything is kept.
    assert_eq!(upload(&mut h, "Recording", "trace", vec![]).unwrap_err().kind, Kind::Privilege);
    assert_eq!(upload(&mut h, "Outcome", "nope", vec![]).unwrap_err().kind, Kind::UndefinedColumn);
    let e = upload(&mut h, "Outcome", "value", vec![field("case_id", Value::Int(2))]).unwrap_err();
    assert_eq!(e.kind, Kind::Privilege, "another key's row: {e:?}");
    let e = upload(&mut h, "Outcome", "value", vec![field("value", Value::Int(2))]).unwrap_err();
    assert_eq!(e.kind, Kind::UndefinedColumn, "not a key attribute: {e:?}");
    let e = upload(&mut h, "Part", "plot", vec![]).unwrap_err();
    assert!(e.message.contains("no value for unit"), "{}", e.message);

    // A part's row: the key's case_id filled in.
    let n = upload(&mut h, "Part", "plot", vec![field("unit", Value::Int(3))]).unwrap();
    Database::upload_write(&mut h, n, b"abc".to_vec()).unwrap();
    Database::upload_write(&mut h, n, b"def".to_vec()).unwrap();
    let r = Database::upload_finish(&mut h, n).unwrap();
    let (table, attribute, key, _, spooled) = &h.backend.puts[0];
    assert_eq!((table.as_str(), attribute.as_str(), *spooled), ("__outcome__part", "plot", false));
    assert_eq!(key, &vec![field("case_id", Value::Int(1)), field("unit", Value::Int(3))]);
    // What it uploaded, it may read back; a finished upload takes nothing more.
    assert_eq!(read(&mut h, &r, None, 0, 100).unwrap(), b"abcdef");
    assert_eq!(Database::upload_write(&mut h, n, vec![1]).unwrap_err().kind, Kind::Value);
    assert_eq!(Database::upload_finish(&mut h, n).unwrap_err().kind, Kind::Value);
}

#[test]
fn a_large_upload_is_spooled_to_a_file_that_is_removed_after() {
    let mut h = host();
    let n = upload(&mut h, "Outcome", "value", vec![]).unwrap();
    let chunk = vec![9u8; 1 << 20];
    for _ in 0..9 {
        Database::upload_write(&mut h, n, chunk.clone()).unwrap();
    }
    let spool = h.backend.spools[0].clone();
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 9 << 20);
    let r = Database::upload_finish(&mut h, n).unwrap();
    assert!(h.backend.puts[0].4, "stored from the spool file");
    assert!(!spool.exists(), "the spool file is removed once stored");
    assert_eq!(read(&mut h, &r, None, (9 << 20) - 2, 10).unwrap(), vec![9, 9]);

    // An upload dropped unfinished leaves no spool file either.
    let n = upload(&mut h, "Outcome", "value", vec![]).unwrap();
    for _ in 0..9 {
        Database::upload_write(&mut h, n, chunk.clone()).unwrap();
    }
    let spool = h.backend.spools[1].clone();
    assert!(spool.exists());
    Database::upload_drop(&mut h, n);
    assert!(!spool.exists());
}

#[test]
fn key_values_are_written_as_datajoint_python_prints_them() {
    use crate::store::schema_path::KeyValue;
    assert_eq!(key_value(&Value::Int(-3)), Some(KeyValue::Number("-3".into())));
    assert_eq!(key_value(&Value::Date(0)), Some(KeyValue::Iso("1970-01-01".into())));
    assert_eq!(key_value(&Value::Date(19_723)), Some(KeyValue::Iso("2024-01-01".into())));
    assert_eq!(key_value(&Value::Date(-1)), Some(KeyValue::Iso("1969-12-31".into())));
    assert_eq!(key_value(&Value::Date(11_016)), Some(KeyValue::Iso("2000-02-29".into())));
    assert_eq!(key_value(&Value::Time(3_723_000_500)), Some(KeyValue::Iso("01:02:03.000500".into())));
    assert_eq!(key_value(&Value::Time(0)), Some(KeyValue::Iso("00:00:00".into())));
    assert_eq!(
        key_value(&Value::Timestamp(1_704_067_200_000_000 + 45_296_000_000)),
        Some(KeyValue::DateTime("2024-01-01 12:34:56".into()))
    );
    assert_eq!(
        key_value(&Value::Uuid((0x0123_4567_89ab_cdef, 0x0011_2233_4455_6677))),
        Some(KeyValue::Text("01234567-89ab-cdef-0011-223344556677".into()))
    );
    assert_eq!(key_value(&Value::Null), None);
    assert_eq!(key_value(&Value::Bytes(vec![])), None);
}

#[test]
fn uploads_share_one_memory_allowance_and_respect_the_spool_limit() {
    let mut h = host();
    // Two uploads of 5 MiB each: the second goes past the 8 MiB the call may hold in memory.
    let a = upload(&mut h, "Outcome", "value", vec![]).unwrap();
    let b = upload(&mut h, "Outcome", "value", vec![]).unwrap();
    Database::upload_write(&mut h, a, vec![1; 5 << 20]).unwrap();
    assert!(h.backend.spools.is_empty());
    Database::upload_write(&mut h, b, vec![2; 5 << 20]).unwrap();
    assert_eq!(h.backend.spools.len(), 1, "the second upload spilled");
    Database::upload_drop(&mut h, a);
    Database::upload_drop(&mut h, b);

    // temp_file_limit bounds what a call spools in all.
    h.backend.spool_limit = Some(12 << 20);
    let c = upload(&mut h, "Outcome", "value", vec![]).unwrap();
    let e = Database::upload_write(&mut h, c, vec![3; 13 << 20]).unwrap_err();
    assert_eq!(e.kind, Kind::Limit, "{e:?}");

    // At most MAX_UPLOADS open at once.
    let mut h = host();
    for _ in 0..MAX_UPLOADS {
        upload(&mut h, "Outcome", "value", vec![]).unwrap();
    }
    assert_eq!(upload(&mut h, "Outcome", "value", vec![]).unwrap_err().kind, Kind::Limit);
}

#[test]
fn references_count_only_from_a_tables_store_attributes() {
    let mut h = host();
    // A plain json column of a readable table holding a reference-shaped value: not a reference.
    let planted = "_hash/other/aaaaaaaaaaaaaaaaaaaaaaaaaa";
    h.backend.rows.insert(
        "\"t\".\"recording\"".into(),
        vec![vec![
            field("rec", Value::Int(5)),
            field("trace", Value::Json(reference(TRACE))),
            field("notes", Value::Json(reference(planted))),
        ]],
    );
    h.backend.objects.insert((Some("local".into()), planted.into()), vec![1]);
    fetch_recording(&mut h);
    assert_eq!(read(&mut h, &reference(planted), None, 0, 1).unwrap_err().kind, Kind::Privilege);
    assert_eq!(read(&mut h, &reference(TRACE), None, 0, 1).unwrap(), vec![0]);

    // A fetch that leaves the store attribute out makes nothing readable.
    let mut h = host();
    let q = Query {
        relation: "Recording".into(),
        restrictions: vec![],
        attributes: vec!["rec".into()],
        order_by: vec![],
        limit: None,
    };
    Database::fetch(&mut h, q, false, usize::MAX).unwrap();
    assert_eq!(read(&mut h, &reference(TRACE), None, 0, 1).unwrap_err().kind, Kind::Privilege);
}
