"""Make functions with objects (contract 0.1.1): the trace_stats component (udfs/rust/trace_stats)
reads a <blob@local> trace datajoint-python 2.3.5 stored, streamed in chunks, and writes a
<blob@local>, an in-row <blob>, an <object@local> report and <npy@local> part arrays that
datajoint-python fetches; a make reads only references it fetched and writes only its target and
parts; objects of a key that failed are referenced by nothing and collected."""

import json
import os
import pathlib
import shutil

import datajoint as dj
import numpy as np
import pytest
from psycopg import errors

from conftest import component, connect, connect_datajoint, signal_masks

SCHEMA = "mkobj"
WINDOW = 65_536


@pytest.fixture(scope="module")
def db():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    for cls, tier, definition in [
        ("Trace", "manual", "trace_id : int32\n---\ntrace : <blob@local>\ngain : <blob>"),
        (
            "TraceStats",
            "computed",
            "-> Trace\n---\nn : int64\nmean : float64\npeak : float64\ncentered : <blob@local>\n"
            "summary : <blob>\nreport : <object@local>",
        ),
        ("TraceStats.Window", "part", "-> master\nwindow : int32\n---\nenergy : float64\nsamples : <npy@local>"),
        (
            "TraceStatsPy",
            "computed",
            "-> Trace\n---\nn : int64\nmean : float64\npeak : float64\ncentered : <blob@local>\n"
            "summary : <blob>\nreport : <object@local>",
        ),
        ("TraceStatsPy.Window", "part", "-> master\nwindow : int32\n---\nenergy : float64\nsamples : <npy@local>"),
        ("Case", "manual", "case_id : int32\n---\nmode : varchar(16)\nn : int64"),
        ("Outcome", "computed", "-> Case\n---\nvalue : int64"),
    ]:
        c.execute("SELECT dj.declare(%s, %s, %s)", (f"{SCHEMA}.{cls}", tier, definition))
    c.execute("SELECT dj.register_module('trace_stats', %s)", (component("trace_stats"),))
    c.execute("SELECT dj.register_module('misbehave', %s)", (component("misbehave"),))
    c.execute("SELECT dj.register_module('trace_stats_py', %s)", (component("trace_stats_py"),))
    c.execute(f"SELECT dj.set_make('{SCHEMA}.TraceStats', 'trace_stats')")
    c.execute(f"SELECT dj.set_make('{SCHEMA}.TraceStatsPy', 'trace_stats_py')")
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave')")
    yield c
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute("DELETE FROM dj.makes")
    c.close()


@pytest.fixture(scope="module")
def python(db, tmp_path_factory):
    """datajoint-python on the server's machine, sharing its local store: the folders it makes
    are left writable for the server's OS user (the tests run as another user)."""
    conn = connect_datajoint()
    dj.config["stores"] = db.execute("SELECT dj.store_config()").fetchone()[0]
    dj.config["download_path"] = str(tmp_path_factory.mktemp("downloads"))
    umask = os.umask(0)
    yield dj.VirtualModule("mkobj", SCHEMA, connection=conn)
    os.umask(umask)
    conn.close()


def populate(c, table, **kw):
    args = "".join(f", {k} => {v}" for k, v in kw.items())
    return c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.{table}'{args})").fetchone()


@pytest.fixture(scope="module")
def trace(python):
    """Trace 1: 3 x 50 000 random samples (1.2 MB, not compressible), stored by datajoint-python."""
    trace = np.random.default_rng(5).normal(size=(3, 50_000))
    python.Trace.insert1({"trace_id": 1, "trace": trace, "gain": np.array([2.0])})
    return trace


@pytest.mark.parametrize("table", ["TraceStats", "TraceStatsPy"])
def test_a_make_reads_and_writes_objects_datajoint_python_shares(db, python, trace, table):
    """The Rust component and the Python one compute the same rows and objects from trace 1."""
    assert populate(db, table, restriction="'trace_id = 1'")[:2] == (1, 0)
    target = getattr(python, table)
    sql = "__trace_stats" if table == "TraceStats" else "__trace_stats_py"

    row = (target & "trace_id = 1").fetch1()
    mean = trace.mean()
    assert row["n"] == trace.size
    assert row["mean"] == pytest.approx(mean)
    assert row["peak"] == pytest.approx(trace.max())
    # The trace came in Fortran order with its shape; the centred one goes back the same way.
    np.testing.assert_allclose(row["centered"], (trace - mean) * 2.0)
    assert row["centered"].shape == (3, 50_000)
    np.testing.assert_allclose(row["summary"], [[trace.size, mean, trace.max()]])
    report = row["report"]
    assert report.path.endswith(".txt") and f"trace_id=1" in report.path
    assert report.read().decode().startswith("trace {trace_id: 1}: 150000 samples, shape [3, 50000]")

    windows = (target.Window & "trace_id = 1").to_dicts(order_by="window")
    flat = ((trace - mean) * 2.0).flatten(order="F")
    assert [w["window"] for w in windows] == [0, 1, 2]
    for w in windows:
        expected = flat[w["window"] * WINDOW : (w["window"] + 1) * WINDOW]
        samples = w["samples"].load() if hasattr(w["samples"], "load") else w["samples"]
        np.testing.assert_allclose(np.asarray(samples), expected)
        assert w["energy"] == pytest.approx(float((expected**2).sum()))

    # The centred trace is hash-addressed like datajoint-python's own, and verifies.
    ref = db.execute(f"SELECT centered FROM {SCHEMA}.{sql} WHERE trace_id = 1").fetchone()[0]
    assert ref["path"].startswith(f"_hash/{SCHEMA}/")
    assert db.execute("SELECT dj.object_verify(%s::jsonb)", (json.dumps(ref),)).fetchone()[0]


def test_a_large_object_is_streamed_and_spooled(python):
    """A 12 MB trace: read in chunks, the 12 MB result spooled past 8 MiB of host memory; the
    spool bounded by temp_file_limit and dj.make_upload_limit, and never left behind."""
    trace = np.linspace(-1, 1, 1_500_000)
    python.Trace.insert1({"trace_id": 2, "trace": trace, "gain": np.array([1.0])})
    db = connect()
    # What a killed backend of the same pid left: removed when this one first spools.
    datadir = pathlib.Path(db.execute("SHOW data_directory").fetchone()[0])
    spool_dir = datadir / "base" / "pgsql_tmp"
    if not spool_dir.exists():
        spool_dir.mkdir()
        shutil.chown(spool_dir, "postgres", "postgres")
    stale = spool_dir / f"pgsql_tmp{db.info.backend_pid}.dj_upload7"
    stale.write_bytes(b"left by a backend that died")
    # PostgreSQL's own limit on temporary files, and ours, bound what a make spools.
    for setting in ("temp_file_limit", "dj.make_upload_limit"):
        db.execute(f"SET {setting} = '4MB'")
        try:
            with pytest.raises(errors.ConfigurationLimitExceeded, match="exceed the spool limit"):
                populate(db, "TraceStats", restriction="'trace_id = 2'")
        finally:
            db.execute(f"RESET {setting}")
    assert populate(db, "TraceStats", restriction="'trace_id = 2'")[:2] == (1, 0)
    row = (python.TraceStats & "trace_id = 2").fetch1()
    np.testing.assert_allclose(row["centered"], trace - trace.mean(), atol=1e-12)
    size = db.execute(f"SELECT (centered ->> 'size')::bigint FROM {SCHEMA}.__trace_stats WHERE trace_id = 2").fetchone()[0]
    assert size > 8 << 20, "the upload went past the host's 8 MiB of memory"
    assert len(python.TraceStats.Window & "trace_id = 2") == -(-1_500_000 // WINDOW)
    # No spool file is left behind, the stale one included.
    assert not list(spool_dir.glob("*dj_upload*"))
    db.close()


def test_threads_started_for_objects_never_take_signals(db, python):
    """A make's object I/O on a file store (reads, uploads, spooling) starts threads only with
    every signal blocked, so Postgres' signals reach the main thread alone."""
    python.Trace.insert1({"trace_id": 5, "trace": np.arange(3000.0), "gain": np.array([1.0])})
    victim = connect()
    try:
        pid = victim.info.backend_pid
        assert victim.execute(f"SELECT * FROM dj.populate('{SCHEMA}.TraceStats', 'trace_id = 5')").fetchone()[:2] == (1, 0)
        for tid, (name, blocked) in signal_masks(pid).items():
            if tid != pid:
                for sig in (2, 10, 14, 15):
                    assert blocked & (1 << (sig - 1)), f"thread {name} ({tid}) may take signal {sig}"
    finally:
        victim.close()


def test_a_failed_key_keeps_no_reference_and_gc_takes_its_objects(db, python):
    """The part insert fails after every object of the key was uploaded: nothing is referenced."""
    db.execute(
        f"""CREATE FUNCTION {SCHEMA}.refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$BEGIN IF NEW.trace_id = 3 THEN RAISE EXCEPTION 'no windows for trace 3'; END IF; RETURN NEW; END$$"""
    )
    db.execute(
        f"CREATE TRIGGER refuse BEFORE INSERT ON {SCHEMA}.__trace_stats__window FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse()"
    )
    python.Trace.insert1({"trace_id": 3, "trace": np.arange(10.0), "gain": np.array([3.0])})
    assert populate(db, "TraceStats", restriction="'trace_id = 3'", suppress_errors="true")[:2] == (0, 1)
    assert len(python.TraceStats & "trace_id = 3") == 0
    # Its report was written (schema-addressed, under the key) and is now garbage.
    garbage = [
        r[0]
        for r in db.execute("SELECT key FROM dj.gc('local', dry_run => true, grace => '0 seconds')").fetchall()
        if f"/{SCHEMA}/__trace_stats/trace_id=3/" in r[0] or f"/{SCHEMA}/__trace_stats__window/trace_id=3/" in r[0]
    ]
    assert any("/report_" in g for g in garbage), garbage
    assert any("/samples_" in g for g in garbage), garbage
    # What the successful keys wrote is referenced: never garbage.
    referenced = db.execute(f"SELECT report ->> 'path' FROM {SCHEMA}.__trace_stats").fetchall()
    listed = {r[0] for r in db.execute("SELECT key FROM dj.gc('local', dry_run => true, grace => '0 seconds')").fetchall()}
    assert referenced and not listed & {r[0] for r in referenced}


@pytest.mark.parametrize(
    "mode, sqlstate, message",
    [
        ("object-forge", "42501", "did not fetch a reference to object _hash/secret/"),
        ("object-foreign", "42501", 'may not insert into "mkobj"."case"'),
        ("object-expr", "42501", "did not fetch a reference to object _hash/secret/"),
    ],
)
def test_a_make_reads_only_fetched_references_and_writes_only_its_tables(db, mode, sqlstate, message):
    """Made up, computed by a relation expression, or for another table: refused."""
    case_id = {"object-forge": 1, "object-foreign": 2, "object-expr": 3}[mode]
    db.execute(f"INSERT INTO {SCHEMA}.case VALUES (%s, %s, 1)", (case_id, mode))
    with pytest.raises(errors.Error) as e:
        populate(db, "Outcome", restriction=f"'case_id = {case_id}'")
    assert e.value.sqlstate == sqlstate, e.value
    assert message in str(e.value), e.value


def test_a_make_uses_stores_as_the_role_that_asked(db):
    """A LOGIN role that may read the trace and write the results, but is not granted the trace's
    store: its populate stops at the store (as its dj.object_read would); granted, it runs."""
    schema, role, store = "mkobj_priv", "mkobj_lab", "mkpriv"

    def clean():
        db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        db.execute("SELECT dj.drop_store(name) FROM dj._stores WHERE name = %s", (store,))
        if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            db.execute(f"DROP OWNED BY {role}")
            db.execute(f"DROP ROLE {role}")

    clean()
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute("SELECT dj.add_store(%s, %s)", (store, json.dumps({"protocol": "file", "location": "mkpriv_store"})))
    try:
        for cls, tier, definition in [
            ("Trace", "manual", f"trace_id : int32\n---\ntrace : <blob@{store}>\ngain : <blob>"),
            (
                "TraceStats",
                "computed",
                "-> Trace\n---\nn : int64\nmean : float64\npeak : float64\ncentered : <blob@local>\n"
                "summary : <blob>\nreport : <object@local>",
            ),
            ("TraceStats.Window", "part", "-> master\nwindow : int32\n---\nenergy : float64\nsamples : <npy@local>"),
        ]:
            db.execute("SELECT dj.declare(%s, %s, %s)", (f"{schema}.{cls}", tier, definition))
        db.execute(f"SELECT dj.set_make('{schema}.TraceStats', 'trace_stats')")
        db.execute(
            f"INSERT INTO {schema}.trace VALUES (1, dj.object_put('{schema}.Trace', 'trace', "
            "dj.blob_encode('[1, 2, 3]', 'float64')), dj.blob_encode('[2.0]', 'float64'))"
        )
        db.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        db.execute(f"GRANT INSERT ON {schema}.__trace_stats, {schema}.__trace_stats__window TO {role}")
        lab = connect(user=role)
        try:
            with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for store {store}"):
                lab.execute(f"SELECT * FROM dj.populate('{schema}.TraceStats')")
            assert db.execute(f"SELECT count(*) FROM {schema}.__trace_stats").fetchone()[0] == 0
            db.execute("SELECT dj.grant_store(%s, %s)", (store, role))
            assert lab.execute(f"SELECT * FROM dj.populate('{schema}.TraceStats')").fetchone()[:2] == (1, 0)
            assert db.execute(f"SELECT n, mean FROM {schema}.__trace_stats").fetchone() == (3, 2.0)
        finally:
            lab.close()
    finally:
        clean()
