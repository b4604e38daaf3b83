//! The host's make call against an in-memory database and the real `misbehave` component
//! (udfs/rust/misbehave): what a guest may read and write, how failures read.

use std::sync::OnceLock;

use wasmtime::component::Component;

use super::*;
use crate::algebra::Code;
use crate::make::{self, Field, MakeError, Output, Prepared};
use crate::naming;
use crate::sandbox::{Cancel, Limits, SandboxError};

/// Tables in schema `t`: Case (manual), Outcome (computed from Case), Other (unrelated).
pub(super) struct Memory {
    tables: Vec<TableInfo>,
    /// Rows a statement returns, by its label (a table's qualified name or an expression).
    pub(super) rows: HashMap<String, Vec<Row>>,
    queries: Vec<(String, usize)>,
    inserts: Vec<(Statement, Vec<Value>)>,
    logs: Vec<(Level, String)>,
    /// Objects by store and key.
    pub(super) objects: HashMap<(Option<String>, String), Vec<u8>>,
    /// Uploads stored: table, attribute, key, filename, whether they came from a spool file.
    pub(super) puts: Vec<(String, String, Row, Option<String>, bool)>,
    /// Spool files handed out.
    pub(super) spools: Vec<std::path::PathBuf>,
    pub(super) spool_limit: Option<u64>,
}

fn column(name: &str, type_name: &str, in_key: bool) -> Column {
    Column { name: name.into(), type_name: type_name.into(), type_id: 0, in_key, store: false }
}

/// A store attribute: its values are object references.
fn store_column(name: &str) -> Column {
    Column { store: true, ..column(name, "jsonb", false) }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn case_row(mode: &str, n: i64) -> Row {
    vec![Field { name: "mode".into(), value: text(mode) }, Field { name: "n".into(), value: Value::Int(n) }]
}

impl Memory {
    pub(super) fn new(case_rows: Vec<Row>) -> Memory {
        let t = |name: &str, columns: Vec<Column>| TableInfo { table: Table::new("t", name), columns };
        let tables = vec![
            t(
                "case",
                vec![
                    column("case_id", "integer", true),
                    column("mode", "text", false),
                    column("n", "bigint", false),
                ],
            ),
            t(
                "__outcome",
                vec![
                    column("case_id", "integer", true),
                    column("value", "bigint", false),
                    column("_job_start_time", "timestamp", false),
                    column("_job_duration", "double precision", false),
                    column("_job_version", "character varying(64)", false),
                ],
            ),
            t("other", vec![column("case_id", "integer", true)]),
            t(
                "recording",
                vec![column("rec", "integer", true), store_column("trace"), column("notes", "jsonb", false)],
            ),
            t(
                "__outcome__part",
                vec![
                    column("case_id", "integer", true),
                    column("unit", "integer", true),
                    column("plot", "jsonb", false),
                ],
            ),
        ];
        let rows = HashMap::from([("\"t\".\"case\"".to_string(), case_rows)]);
        Memory {
            tables,
            rows,
            queries: Vec::new(),
            inserts: Vec::new(),
            logs: Vec::new(),
            objects: HashMap::new(),
            puts: Vec::new(),
            spools: Vec::new(),
            spool_limit: None,
        }
    }
}

impl Backend for Memory {
    type Error = HostError;

    fn resolve(&mut self, name: &str) -> Result<Table, HostError> {
        let parts = crate::sql::split_name(name).unwrap_or_default();
        let found = match parts.as_slice() {
            [schema, x] => self.tables.iter().find(|t| {
                t.table.schema == *schema
                    && (t.table.name == *x || naming::class_name_of(&t.table.name) == *x)
            }),
            _ => None,
        };
        found.map(|t| t.table.clone()).ok_or_else(|| {
            HostError::new(Kind::Algebra(Code::UndefinedTable), format!("table {name} does not exist"), "")
        })
    }

    fn describe(&mut self, table: &Table) -> Result<TableInfo, HostError> {
        Ok(self.tables.iter().find(|t| t.table == *table).expect("resolved").clone())
    }

    fn heading(&mut self, table: &Table) -> Result<algebra::TableInfo, HostError> {
        let info = self.describe(table)?;
        Ok(algebra::TableInfo {
            display: format!("t.{}", naming::class_name_of(&table.name)),
            schema: table.schema.clone(),
            table: table.name.clone(),
            attributes: info
                .columns
                .iter()
                .filter(|c| !c.hidden())
                .map(|c| algebra::Attribute { name: c.name.clone(), in_key: c.in_key, lineage: None })
                .collect(),
            lineage_available: false,
        })
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_string()));
    }

    fn query(&mut self, s: &Statement, args: &[&Value], _budget: usize) -> Result<Vec<Row>, HostError> {
        assert_eq!(args.len(), s.params.len());
        self.queries.push((s.sql.clone(), args.len()));
        Ok(self.rows.get(&s.label).cloned().unwrap_or_default())
    }

    /// Every key gets the label's rows, led by its ordinal.
    fn query_keys(
        &mut self,
        s: &Statement,
        args: &[Vec<&Value>],
        _budget: usize,
    ) -> Result<Vec<Row>, HostError> {
        assert_eq!(args.len(), s.params.len());
        self.queries.push((s.sql.clone(), args.len()));
        let rows = self.rows.get(&s.label).cloned().unwrap_or_default();
        let keys = args.first().map_or(0, |a| a.len());
        let mut out = Vec::new();
        for ordinal in 1..=keys {
            for row in &rows {
                let mut row = row.clone();
                row.insert(0, Field { name: KEY_ORDINAL.into(), value: Value::Int(ordinal as i64) });
                out.push(row);
            }
        }
        Ok(out)
    }

    fn execute(&mut self, s: &Statement, args: &[&Value]) -> Result<(), HostError> {
        self.inserts.push((s.clone(), args.iter().map(|v| (*v).clone()).collect()));
        Ok(())
    }

    fn store_name(&mut self, store: Option<&str>) -> String {
        store.unwrap_or("local").to_string()
    }

    fn object_size(&mut self, store: Option<&str>, key: &str) -> Result<Option<u64>, HostError> {
        Ok(self.objects.get(&(store.map(str::to_string), key.to_string())).map(|o| o.len() as u64))
    }

    fn object_range(
        &mut self,
        store: Option<&str>,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, HostError> {
        let o = &self.objects[&(store.map(str::to_string), key.to_string())];
        Ok(o[range.start as usize..range.end as usize].to_vec())
    }

    fn object_put(
        &mut self,
        table: &Table,
        attribute: &str,
        key: &Row,
        filename: Option<&str>,
        content: Content,
    ) -> Result<String, HostError> {
        let (bytes, spooled) = match &content {
            Content::Bytes(b) => (b.clone(), false),
            Content::File(f) => (std::fs::read(f.path()).unwrap(), true),
        };
        let path = format!("_schema/t/{}/{attribute}_{}", table.name, self.puts.len());
        self.puts.push((
            table.name.clone(),
            attribute.into(),
            key.clone(),
            filename.map(str::to_string),
            spooled,
        ));
        let size = bytes.len();
        self.objects.insert((Some("local".into()), path.clone()), bytes);
        Ok(format!(r#"{{"path": "{path}", "store": "local", "size": {size}}}"#))
    }

    fn spool_limit(&mut self) -> Option<u64> {
        self.spool_limit
    }

    fn spool_path(&mut self) -> Result<std::path::PathBuf, HostError> {
        // Unique across the tests of this process, which run in parallel.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("dj-host-test-{}-{n}", std::process::id()));
        self.spools.push(p.clone());
        Ok(p)
    }
}

#[test]
fn a_component_built_against_contract_0_1_0_links_and_runs() {
    // udfs/components/legacy/misbehave-0.1.0.wasm: misbehave as built before the contract's
    // 0.1.1 added `objects`; it imports datajoint:make/host@0.1.0.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../udfs/components/legacy/misbehave-0.1.0.wasm");
    let component = make::compile(&std::fs::read(path).unwrap()).unwrap();
    let imports: Vec<String> =
        component.component_type().imports(crate::sandbox::engine()).map(|(n, _)| n.to_string()).collect();
    assert!(imports.iter().any(|n| n == "datajoint:make/host@0.1.0"), "{imports:?}");
    let (result, _, memory) = call_with(&component, vec![case_row("ok", 21)]);
    result.unwrap();
    assert_eq!(memory.inserts[0].1[1], Value::Int(42));
}

fn misbehave() -> &'static Component {
    static COMPONENT: OnceLock<Component> = OnceLock::new();
    COMPONENT.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../udfs/components/misbehave.wasm");
        make::compile(&std::fs::read(path).expect("the misbehave fixture")).expect("a make component")
    })
}

/// One make call of misbehave for key case_id=1 with Case's rows `case_rows`.
fn call(case_rows: Vec<Row>) -> (Result<(), HostError>, Output, Memory) {
    call_with(misbehave(), case_rows)
}

fn call_with(component: &Component, case_rows: Vec<Row>) -> (Result<(), HostError>, Output, Memory) {
    let mut memory = Memory::new(case_rows);
    let target = memory.describe(&Table::new("t", "__outcome")).unwrap();
    let scope =
        Scope { target: target.table.clone(), parts: vec![], readable: vec![Table::new("t", "case")] };
    let session = Arc::new(Session::new(scope, target, vec![], "sha".into()));
    let linker = make::linker::<MakeHost<Memory>>().unwrap();
    let prepared = Prepared::new(&linker, component).unwrap();
    let key = vec![Field { name: "case_id".into(), value: Value::Int(1) }];
    let host = MakeHost {
        session,
        backend: memory,
        key: key.clone(),
        started: Instant::now(),
        started_at: 7,
        objects: Default::default(),
        prefetched: Default::default(),
    };
    let (result, output, host) = prepared.call(host, &key, &Limits::default(), &Cancel::Never);
    let result = result.map_err(|e| failure(e, &output, "\"t\".\"__outcome\""));
    (result, output, host.backend)
}

fn mode(m: &str) -> (Result<(), HostError>, Output, Memory) {
    call(vec![case_row(m, 21)])
}

#[test]
fn a_make_reads_its_key_and_writes_its_row_with_the_job_metadata() {
    let (result, _, memory) = mode("ok");
    result.unwrap();
    assert_eq!(
        memory.queries,
        vec![("SELECT \"mode\", \"n\" FROM \"t\".\"case\" WHERE \"case_id\" = $1 LIMIT 2".to_string(), 1)]
    );
    let (statement, values) = &memory.inserts[0];
    assert_eq!(
        statement.sql,
        "INSERT INTO \"t\".\"__outcome\" (\"case_id\", \"value\", \"_job_start_time\", \"_job_duration\", \"_job_version\") \
         VALUES ($1, $2, $3, $4, $5)"
    );
    assert_eq!(values[..3], [Value::Int(1), Value::Int(42), Value::Timestamp(7)]);
    assert_eq!(values[4], text("sha"));
}

#[test]
fn a_guest_error_is_the_guests_message() {
    let (result, _, memory) = mode("err");
    let e = result.unwrap_err();
    assert_eq!(e.kind, Kind::Guest);
    assert_eq!(e.message, "make function returned an error: case 1 refused");
    assert!(e.hint.contains("nothing it inserted is kept"));
    assert!(memory.inserts.is_empty());
}

#[test]
fn a_host_error_comes_back_as_the_host_made_it() {
    let (result, _, _) = mode("bad-attr");
    let e = result.unwrap_err();
    assert_eq!(e.kind, Kind::UndefinedColumn);
    assert_eq!(e.message, "\"t\".\"__outcome\" has no attribute nope");
    assert_eq!(e.hint, "Its attributes: case_id, value.");
}

#[test]
fn a_trap_shows_the_panic_message_and_the_guests_stderr() {
    let (result, output, _) = mode("panic");
    let e = result.unwrap_err();
    assert!(matches!(e.kind, Kind::Sandbox(SandboxError::Trap { .. })), "{e:?}");
    assert_eq!(e.message, "make function panicked: boom 1");
    assert!(output.stderr.contains("boom 1"));
    assert!(e.detail.unwrap().contains("guest stderr: "));
}

#[test]
fn long_messages_are_cut() {
    let stderr = format!("{}END", "x".repeat(5000));
    let output = Output { stdout: String::new(), stderr };
    let trap = SandboxError::Trap { message: "unreachable".into(), backtrace: None };
    let e: HostError = failure(MakeError::<HostError>::Sandbox(trap), &output, "T");
    let detail = e.detail.unwrap();
    assert!(detail.ends_with("xxEND"));
    assert_eq!(detail.chars().count(), "guest stderr: ".len() + STDERR_TAIL);
    let e: HostError = failure(MakeError::<HostError>::Guest("é".repeat(10_000)), &Output::default(), "T");
    assert!(e.message.ends_with("… (6000 more characters)"), "{}", &e.message[e.message.len() - 40..]);
    assert_eq!(truncated("short", 10), "short");
}

#[test]
fn a_fetch_outside_the_read_scope_is_refused() {
    // The target itself, and an expression that joins it.
    for m in ["foreign-fetch", "foreign-expr"] {
        let (result, _, memory) = mode(m);
        let e = result.unwrap_err();
        assert_eq!(e.kind, Kind::Privilege, "{m}");
        assert_eq!(
            e.message,
            "the make function of \"t\".\"__outcome\" may not read \"t\".\"__outcome\": it is not an ancestor of the target"
        );
        assert_eq!(memory.queries.len(), 1, "only the Case fetch ran");
    }
}

#[test]
fn an_insert_outside_the_write_scope_is_refused() {
    let (result, _, memory) = mode("foreign-insert");
    let e = result.unwrap_err();
    assert_eq!(e.kind, Kind::Privilege);
    assert_eq!(e.message, "the make function of \"t\".\"__outcome\" may not insert into \"t\".\"case\"");
    assert!(memory.inserts.is_empty());
}

#[test]
fn fetch1_needs_exactly_one_row() {
    let (result, _, _) = call(vec![]);
    let e = result.unwrap_err();
    assert_eq!(e.kind, Kind::NoRow);
    assert_eq!(e.message, "fetch1 from \"t\".\"case\" found no rows for key (case_id=1)");
    let (result, _, _) = call(vec![case_row("ok", 1), case_row("ok", 2)]);
    assert_eq!(result.unwrap_err().kind, Kind::SeveralRows);
}

#[test]
fn an_expression_is_compiled_and_restricted_by_the_key() {
    let (result, _, memory) = mode("expr");
    // The expression's rows are not in memory: fetch1 finds none, after the right query.
    assert_eq!(result.unwrap_err().kind, Kind::NoRow);
    let (sql, params) = &memory.queries[1];
    assert!(sql.starts_with("SELECT \"case_id\", \"twice\" FROM (SELECT "), "{sql}");
    assert!(sql.ends_with(") AS q WHERE \"case_id\" = $1 LIMIT 2"), "{sql}");
    assert_eq!(*params, 1);
    let (result, _, _) = mode("bad-expr");
    let e = result.unwrap_err();
    assert_eq!(e.kind, Kind::Algebra(Code::Syntax));
    assert!(e.message.starts_with("cannot read the expression Case * ("), "{}", e.message);
}

#[test]
fn logs_reach_the_backend_without_nul() {
    let (result, _, memory) = mode("log");
    result.unwrap();
    let levels: Vec<Level> = memory.logs.iter().map(|(l, _)| *l).collect();
    assert_eq!(levels, vec![Level::Debug, Level::Info, Level::Notice, Level::Warning]);
    assert!(memory.logs.iter().all(|(_, m)| m == "case 1 says hi"));
}

#[test]
fn a_row_of_another_key_or_with_an_attribute_twice_is_refused() {
    let memory = Memory::new(vec![]);
    let info = memory.tables[1].clone();
    let key = vec![Field { name: "case_id".into(), value: Value::Int(1) }];
    let row = |pairs: &[(&str, i64)]| -> Row {
        pairs.iter().map(|(n, v)| Field { name: n.to_string(), value: Value::Int(*v) }).collect()
    };
    let e = insert_row(&info, row(&[("case_id", 2), ("value", 1)]), &key, None).unwrap_err();
    assert_eq!(e.kind, Kind::Privilege);
    assert_eq!(
        e.message,
        "the make function inserted case_id=2 into \"t\".\"__outcome\", but its key has case_id=1"
    );
    let e = insert_row(&info, row(&[("value", 1), ("value", 2)]), &key, None).unwrap_err();
    assert_eq!(e.kind, Kind::DuplicateColumn);
    let e = insert_row(&info, row(&[("_job_version", 1)]), &key, None).unwrap_err();
    assert_eq!(e.kind, Kind::UndefinedColumn, "hidden attributes are the host's");
    // Columns in the table's order, whatever the row's: one statement per table and attributes.
    let (statement, values) = insert_row(&info, row(&[("value", 5)]), &key, None).unwrap();
    assert_eq!(statement.sql, "INSERT INTO \"t\".\"__outcome\" (\"case_id\", \"value\") VALUES ($1, $2)");
    assert_eq!(values, vec![Value::Int(1), Value::Int(5)]);
    let (same, values) = insert_row(&info, row(&[("value", 6), ("case_id", 1)]), &key, None).unwrap();
    assert_eq!((same, values), (statement, vec![Value::Int(1), Value::Int(6)]));
}

#[test]
fn a_query_with_nul_or_a_bad_order_is_refused() {
    let memory = Memory::new(vec![]);
    let info = memory.tables[0].clone();
    let key = vec![Field { name: "case_id".into(), value: Value::Int(1) }];
    let q = |restrictions: &[&str], order_by: &[&str]| Query {
        relation: "Case".into(),
        restrictions: restrictions.iter().map(|s| s.to_string()).collect(),
        attributes: vec![],
        order_by: order_by.iter().map(|s| s.to_string()).collect(),
        limit: None,
    };
    assert_eq!(statements::check_query_text(&q(&["mode = 'a\0b'"], &[])).unwrap_err().kind, Kind::Nul);
    let (s, batch) =
        statements::fetch_table(&info, &key, &q(&["n > 1"], &["n desc", "KEY"]), Some(5)).unwrap();
    assert_eq!(
        s.sql,
        "SELECT \"case_id\", \"mode\", \"n\" FROM \"t\".\"case\" WHERE \"case_id\" = $1 AND (\"n\" > 1) \
         ORDER BY \"n\" DESC, \"case_id\" LIMIT 5"
    );
    // For many keys: one array parameter per key attribute, the same query per element (its order
    // and limit per key), each row led by its key's ordinal.
    let batch = batch.unwrap();
    assert_eq!(
        batch.sql,
        "SELECT k.dj_key_ordinal, s.* FROM ROWS FROM (pg_catalog.unnest($1)) WITH ORDINALITY AS k(dj_key_1, dj_key_ordinal) \
         CROSS JOIN LATERAL (SELECT \"case_id\", \"mode\", \"n\" FROM \"t\".\"case\" WHERE \"case_id\" = k.dj_key_1 \
         AND (\"n\" > 1) ORDER BY \"n\" DESC, \"case_id\" LIMIT 5) AS s"
    );
    assert_eq!(batch.params, s.params);
    // A query sharing no attribute with the key is the same for every key: nothing to batch.
    assert!(statements::fetch_table(&info, &vec![], &q(&[], &[]), None).unwrap().1.is_none());
    let e = statements::fetch_table(&info, &key, &q(&[], &["n sideways"]), None).unwrap_err();
    assert_eq!(e.kind, Kind::Algebra(Code::Syntax));
    let e = statements::fetch_table(&info, &key, &q(&["1=1) or (true"], &[]), None).unwrap_err();
    assert_eq!(e.kind, Kind::Syntax);
}

#[test]
fn the_read_scope_is_the_ancestors_and_their_parts() {
    use crate::dependencies::{Catalog, Dependencies};
    let t = |n: &str| Table::new("lab", n);
    let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let fk = |c: &str, p: &str, a: &str| (t(c), t(p), vec![(a.to_string(), a.to_string())]);
    // Subject → Session (with part Session.Trial) → Rate (with part Rate.Unit); Stim → Rate.Unit;
    // Other is unrelated; Later depends on Rate.
    let deps = Dependencies::new(Catalog {
        tables: vec![
            (t("subject"), k(&["s"])),
            (t("session"), k(&["s", "n"])),
            (t("session__trial"), k(&["s", "n", "i"])),
            (t("__rate"), k(&["s", "n"])),
            (t("__rate__unit"), k(&["s", "n", "u"])),
            (t("stim"), k(&["u"])),
            (t("other"), k(&["s"])),
            (t("__later"), k(&["s", "n"])),
        ],
        foreign_keys: vec![
            fk("session", "subject", "s"),
            fk("session__trial", "session", "n"),
            fk("__rate", "session", "n"),
            fk("__rate__unit", "__rate", "n"),
            fk("__rate__unit", "stim", "u"),
            fk("__later", "__rate", "n"),
        ],
    })
    .unwrap();
    let scope = Scope::of(&deps, &t("__rate"));
    assert_eq!(scope.parts, vec![t("__rate__unit")]);
    let mut readable = scope.readable.clone();
    readable.sort();
    assert_eq!(readable, vec![t("session"), t("session__trial"), t("stim"), t("subject")]);
    assert!(scope.check_read(&t("other")).is_err() && scope.check_read(&t("__later")).is_err());
    assert!(scope.check_write(&t("__rate__unit")).is_ok() && scope.check_write(&t("session")).is_err());
    assert_eq!(
        Lookup::of(&scope, "Unit"),
        Lookup { name: "\"lab\".\"Unit\"".into(), part: Some(t("__rate__unit")) }
    );
    assert_eq!(Lookup::of(&scope, "Session.Trial").name, "\"lab\".Session.Trial");
    assert_eq!(Lookup::of(&scope, "x.Y").name, "x.Y");
}

/// The key `case_id = id`.
fn key(id: i64) -> Row {
    vec![Field { name: "case_id".into(), value: Value::Int(id) }]
}

/// misbehave prepared, and a host for key 1 whose Case rows are one row of `mode` and `n`.
fn misbehave_host(mode: &str, n: i64) -> (Arc<Session>, Prepared<MakeHost<Memory>>, MakeHost<Memory>) {
    let mut memory = Memory::new(vec![case_row(mode, n)]);
    let target = memory.describe(&Table::new("t", "__outcome")).unwrap();
    let scope =
        Scope { target: target.table.clone(), parts: vec![], readable: vec![Table::new("t", "case")] };
    let session = Arc::new(Session::new(scope, target, vec![], "sha".into()));
    let linker = make::linker::<MakeHost<Memory>>().unwrap();
    let prepared = Prepared::new(&linker, misbehave()).unwrap();
    let host = MakeHost {
        session: session.clone(),
        backend: memory,
        key: key(1),
        started: Instant::now(),
        started_at: 7,
        objects: Default::default(),
        prefetched: Default::default(),
    };
    (session, prepared, host)
}

#[test]
fn an_instance_serves_keys_in_turn_and_is_spent_by_a_failure() {
    // misbehave counts its makes in a static: kept across the calls of one instance.
    let (_, prepared, host) = misbehave_host("count", 0);
    let limits = Limits { timeout: Some(std::time::Duration::from_millis(100)), ..Limits::default() };
    let mut instance = prepared.instance(host, &limits, &Cancel::Never);
    let values = |instance: &mut make::Instance<MakeHost<Memory>>| -> Vec<Value> {
        instance.db_mut().backend.inserts.iter().map(|(_, args)| args[1].clone()).collect()
    };
    for id in 1..=3 {
        instance.db_mut().key = key(id);
        let (result, output) = instance.call(&prepared, &key(id), &limits);
        assert!(result.is_ok() && output.stdout.is_empty());
        assert!(instance.usable());
    }
    assert_eq!(values(&mut instance), vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
    assert_eq!(instance.calls(), 3);
    // Each call has its own output and its own deadline: 2 calls of "stdout" print one line each,
    // and 3 calls computing 60 ms each all finish within a 100 ms limit.
    instance.db_mut().backend.rows.insert("\"t\".\"case\"".into(), vec![case_row("stdout", 5)]);
    for id in 4..=5 {
        instance.db_mut().key = key(id);
        let (result, output) = instance.call(&prepared, &key(id), &limits);
        assert!(result.is_ok());
        assert_eq!((output.stdout.as_str(), output.stderr.as_str()), ("to stdout\n", "to stderr\n"));
    }
    instance.db_mut().backend.rows.insert("\"t\".\"case\"".into(), vec![case_row("busy", 60)]);
    for id in 6..=8 {
        instance.db_mut().key = key(id);
        assert!(instance.call(&prepared, &key(id), &limits).0.is_ok(), "deadline renewed per call");
    }
    // A trap spends the instance: calling it again is refused, and a fresh one counts from 1.
    instance.db_mut().backend.rows.insert("\"t\".\"case\"".into(), vec![case_row("trap", 0)]);
    let (result, _) = instance.call(&prepared, &key(9), &limits);
    assert!(matches!(result, Err(MakeError::Sandbox(SandboxError::Trap { .. }))));
    assert!(!instance.usable());
    let again = instance.call(&prepared, &key(10), &limits).0;
    assert!(matches!(again, Err(MakeError::Sandbox(SandboxError::Internal(_)))));
    let mut backend = instance.into_db();
    backend.backend.rows.insert("\"t\".\"case\"".into(), vec![case_row("count", 0)]);
    backend.backend.inserts.clear();
    backend.key = key(11);
    let mut fresh = prepared.instance(backend, &limits, &Cancel::Never);
    assert!(fresh.call(&prepared, &key(11), &limits).0.is_ok());
    assert_eq!(values(&mut fresh), vec![Value::Int(1)]);
}

#[test]
fn a_batch_of_keys_reads_a_seen_query_once_and_each_key_gets_its_rows() {
    let (session, prepared, host) = misbehave_host("ok", 4);
    let limits = Limits::default();
    let mut instance = prepared.instance(host, &limits, &Cancel::Never);
    // Nothing seen yet: the first key reads its own row.
    assert!(session.batchable(1).is_empty());
    assert!(instance.call(&prepared, &key(1), &limits).0.is_ok());
    let queries = |i: &mut make::Instance<MakeHost<Memory>>| i.db_mut().backend.queries.len();
    assert_eq!(queries(&mut instance), 1);
    // Now the query is known: keys 2..4 are read in one statement, then served from it. (Only
    // queries most keys asked are read: not one asked once when 2 calls are needed.)
    assert!(session.batchable(2).is_empty(), "counting starts again");
    assert!(instance.call(&prepared, &key(1), &limits).0.is_ok());
    assert!(instance.call(&prepared, &key(1), &limits).0.is_ok());
    assert_eq!(queries(&mut instance), 3);
    let batchable = session.batchable(2);
    assert_eq!(batchable.len(), 1);
    assert!(batchable[0].statement().sql.contains("CROSS JOIN LATERAL"));
    let keys: Vec<Row> = (2..=4).map(key).collect();
    let host = instance.db_mut();
    let rows = session.prefetch(&mut host.backend, &batchable[0], &keys, PREFETCH_BUDGET).unwrap();
    assert_eq!(rows.len(), 3);
    host.prefetched.insert(&batchable[0], keys.len(), rows);
    for (position, k) in keys.iter().enumerate() {
        let host = instance.db_mut();
        host.key = k.clone();
        host.prefetched.at(Some(position));
        assert!(instance.call(&prepared, k, &limits).0.is_ok());
    }
    assert_eq!(queries(&mut instance), 4, "one statement for the three keys");
    let values: Vec<Value> = instance.db_mut().backend.inserts.iter().map(|(_, a)| a[1].clone()).collect();
    assert_eq!(values, vec![Value::Int(8); 6]);
    // A key outside the batch, or one whose rows were handed out, reads its own.
    instance.db_mut().prefetched.at(None);
    instance.db_mut().key = key(9);
    assert!(instance.call(&prepared, &key(9), &limits).0.is_ok());
    assert_eq!(queries(&mut instance), 5);
    session.not_batchable(&batchable[0]);
    assert!(session.batchable(0).is_empty());
}
