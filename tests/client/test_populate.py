"""dj.populate from real clients: Postgres' interrupts stop a running make and keep the backend,
the threads WASI needs never take a signal, and datajoint-python 2.3.5 and we populate each
other's tables."""
import os
import time

import datajoint as dj
import psycopg
import pytest
from psycopg import errors

from conftest import component, connect, execute_in_thread, signal_masks, wait_until_active

SCHEMA = "client_populate"


@pytest.fixture(scope="module")
def pipeline():
    """Case/Outcome with the misbehave make; SpikeRate-like tables for interop."""
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    for cls, tier, definition in [
        ("Case", "manual", "case_id : int32\n---\nmode : varchar(16)\nn : int64"),
        ("Outcome", "computed", "-> Case\n---\nvalue : int64"),
        ("Subject", "manual", "subject_id : int32"),
        ("Session", "manual", "-> Subject\nsession : int16"),
        ("Recording", "imported", "-> Session\n---\nduration : float64\nspike_count : int64"),
        ("SpikeRate", "computed", "-> Recording\n---\nmean_rate : float64"),
    ]:
        c.execute("SELECT dj.declare(%s, %s, %s)", (f"{SCHEMA}.{cls}", tier, definition))
    c.execute("SELECT dj.register_module('misbehave', %s)", (component("misbehave"),))
    c.execute("SELECT dj.register_module('spike_rate', %s)", (component("spike_rate"),))
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave')")
    c.execute(f"SELECT dj.set_make('{SCHEMA}.SpikeRate', 'spike_rate')")
    c.execute(f"INSERT INTO {SCHEMA}.subject VALUES (1), (2)")
    c.execute(f"INSERT INTO {SCHEMA}.session VALUES (1, 1), (1, 2), (2, 1)")
    c.execute(f"INSERT INTO {SCHEMA}._recording VALUES (1, 1, 10, 100), (1, 2, 20, 100), (2, 1, 40, 100)")
    yield c
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute("DELETE FROM dj.makes")
    c.close()


@pytest.mark.parametrize("suppress_errors", [False, True])
def test_cancel_stops_a_running_make_and_keeps_nothing_of_it(pipeline, admin, server_log, suppress_errors):
    pipeline.execute(f"INSERT INTO {SCHEMA}.case VALUES (1, 'ok', 1), (2, 'loop', 0)")
    conn = connect()
    conn.execute("SET dj.make_timeout = 0")  # only the cancel can stop it
    pid = conn.info.backend_pid
    # A cancel is never a failed key, even when failures are suppressed: the statement ends.
    thread, outcome = execute_in_thread(
        conn, f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', suppress_errors => {str(suppress_errors).lower()})"
    )
    wait_until_active(admin, pid)
    time.sleep(0.3)
    assert admin.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], errors.QueryCanceled), outcome
    assert "canceling statement due to user request" in str(outcome["error"])
    assert outcome["seconds"] < 5
    # One statement, one transaction: the key done before the cancel is rolled back with it.
    assert pipeline.execute(f"SELECT count(*) FROM {SCHEMA}.__outcome").fetchone()[0] == 0
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    conn.execute("SET statement_timeout = '300ms'")
    with pytest.raises(errors.QueryCanceled, match="statement timeout"):
        conn.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome')")
    conn.execute("RESET statement_timeout")
    assert conn.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', 'case_id = 1')").fetchone() == (1, 0, 0)
    conn.close()
    pipeline.execute(f"DELETE FROM {SCHEMA}.__outcome")
    pipeline.execute(f"DELETE FROM {SCHEMA}.case")


def test_wasi_threads_never_take_signals_and_terminate_still_works(pipeline, admin, server_log):
    """After a WASI-importing make ran (stdout, sleep: WASI's async host calls), the backend's
    extra threads block every signal, so SIGTERM and SIGINT reach Postgres' main thread."""
    pipeline.execute(f"INSERT INTO {SCHEMA}.case VALUES (14, 'stdout', 1), (15, 'sleep', 2), (5, 'loop', 0)")
    victim = connect()
    pid = victim.info.backend_pid
    assert victim.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', 'case_id > 10')").fetchone() == (2, 0, 0)
    masks = signal_masks(pid)
    extra = {tid: m for tid, m in masks.items() if tid != pid}
    assert extra, "the epoch ticker and WASI's runtime thread exist after a make ran"
    for tid, (name, blocked) in extra.items():
        # SIGINT (2), SIGTERM (15), SIGUSR1 (10) and SIGALRM (14) drive Postgres: all blocked.
        for sig in (2, 10, 14, 15):
            assert blocked & (1 << (sig - 1)), f"thread {name} ({tid}) may take signal {sig}"
    main_blocked = masks[pid][1]
    assert not main_blocked & (1 << 14), "the main thread still takes SIGTERM"
    victim.execute("SET dj.make_timeout = 0")
    thread, outcome = execute_in_thread(victim, f"SELECT * FROM dj.populate('{SCHEMA}.Outcome')")
    wait_until_active(admin, pid)
    time.sleep(0.3)
    assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], psycopg.OperationalError), outcome
    assert outcome["seconds"] < 5
    assert "terminating connection due to administrator command" in server_log()
    victim.close()
    pipeline.execute(f"DELETE FROM {SCHEMA}.__outcome")
    pipeline.execute(f"DELETE FROM {SCHEMA}.case")


def test_datajoint_python_reads_what_our_populate_computed(pipeline, dj_connection):
    assert pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.SpikeRate', max_calls => 2)").fetchone() == (2, 0, 1)
    lab = dj.VirtualModule("lab", SCHEMA, connection=dj_connection)
    assert isinstance(lab.SpikeRate(), dj.Computed)
    rows = lab.SpikeRate.to_dicts(order_by=("subject_id", "session"))
    assert [(r["subject_id"], r["session"], r["mean_rate"]) for r in rows] == [(1, 1, 10.0), (1, 2, 5.0)]
    # Its view of the work left agrees with ours.
    remaining, total = lab.SpikeRate.progress(display=False)
    assert (remaining, total) == pipeline.execute(f"SELECT * FROM dj.progress('{SCHEMA}.SpikeRate')").fetchone() == (1, 3)
    # And its own populate finishes what ours left (its make, in Python).
    schema = dj.Schema(SCHEMA, connection=dj_connection, create_tables=False)

    @schema
    class SpikeRate(dj.Computed):
        definition = "-> lab.Recording\n---\nmean_rate : float64"

        def make(self, key):
            duration, spikes = (lab.Recording & key).fetch1("duration", "spike_count")
            self.insert1(dict(key, mean_rate=spikes / duration))

    SpikeRate.populate()
    assert pipeline.execute(f"SELECT * FROM dj.progress('{SCHEMA}.SpikeRate')").fetchone() == (0, 3)
    # Rows it made carry no module version: to us they are stale (not made by our module).
    stale = pipeline.execute(f"SELECT * FROM dj.stale('{SCHEMA}.SpikeRate')").fetchall()
    assert [s[0] for s in stale] == [{"subject_id": 2, "session": 1}]


def test_our_populate_fills_a_pipeline_datajoint_python_declared(pipeline, dj_connection):
    theirs = SCHEMA + "_py"
    pipeline.execute(f"DROP SCHEMA IF EXISTS {theirs} CASCADE")
    schema = dj.Schema(theirs, connection=dj_connection)

    @schema
    class Subject(dj.Manual):
        definition = "subject_id : int32"

    @schema
    class Session(dj.Manual):
        definition = "-> Subject\nsession : int16"

    @schema
    class Recording(dj.Imported):
        definition = "-> Session\n---\nduration : float64\nspike_count : int64"

    @schema
    class SpikeRate(dj.Computed):
        definition = "-> Recording\n---\nmean_rate : float64"

    Subject.insert([(1,), (2,)])
    Session.insert([(1, 1), (2, 1)])
    Recording.insert([(1, 1, 4.0, 10), (2, 1, 5.0, 10)], allow_direct_insert=True)
    # Our make function (the Rust spike_rate component) on their Computed table.
    pipeline.execute(f"SELECT dj.set_make('{theirs}.SpikeRate', 'spike_rate')")
    assert pipeline.execute(f"SELECT * FROM dj.populate('{theirs}.SpikeRate')").fetchone() == (2, 0, 0)
    rows = SpikeRate.to_dicts(order_by="subject_id")
    assert [(r["subject_id"], r["mean_rate"]) for r in rows] == [(1, 2.5), (2, 2.0)]
    assert SpikeRate.progress(display=False) == (0, 2)
    # Their table has no _job_* columns (add_job_metadata is off by default): nothing to record.
    assert pipeline.execute(f"SELECT count(*) FROM dj.stale('{theirs}.SpikeRate')").fetchone()[0] == 0
    pipeline.execute(f"DELETE FROM dj.makes WHERE schema_name = '{theirs}'")
    schema.drop(prompt=False)


def outcome_values(c, low):
    return dict(c.execute(f"SELECT case_id, value FROM {SCHEMA}.__outcome WHERE case_id >= %s ORDER BY 1", (low,)).fetchall())


def test_one_instance_serves_the_keys_of_a_run_and_a_failed_key_replaces_it(pipeline):
    """As a datajoint-python process keeps its objects between keys, one instance of the make
    serves a run's keys in turn (misbehave's `count` inserts how many makes its instance ran); a
    trap or an error spends the instance (the next key gets a fresh one); a new run, a pool worker
    and a binding with fresh_instance => true start fresh."""
    c = pipeline
    modes = {901: "count", 902: "count", 903: "count", 904: "trap", 905: "count", 906: "count",
             907: "err", 908: "count"}
    with c.cursor() as cur:
        cur.executemany(f"INSERT INTO {SCHEMA}.case VALUES (%s, %s, 0)", list(modes.items()))
    populate = f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', 'case_id >= 900', suppress_errors => true, \"order\" => 'original')"
    assert c.execute(populate).fetchone() == (6, 2, 2)
    assert outcome_values(c, 900) == {901: 1, 902: 2, 903: 3, 905: 1, 906: 2, 908: 1}
    # A new run (in the same backend) starts with a fresh instance.
    c.execute(f"DELETE FROM {SCHEMA}.__outcome WHERE case_id IN (901, 902)")
    c.execute(f"UPDATE {SCHEMA}.case SET mode = 'ok' WHERE case_id IN (904, 907)")
    c.execute(f'DELETE FROM {SCHEMA}."~~outcome"')
    assert c.execute(populate).fetchone() == (4, 0, 0)
    got = outcome_values(c, 900)
    assert (got[901], got[902]) == (1, 2) and (got[904], got[907]) == (0, 0)
    # A pool worker keeps its instance too.
    c.execute(f"DELETE FROM {SCHEMA}.__outcome WHERE case_id >= 900")
    c.execute(f"UPDATE {SCHEMA}.case SET mode = 'count' WHERE case_id >= 900")
    assert c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', 'case_id >= 900', workers => 1)").fetchone() == (8, 0, 0)
    assert sorted(outcome_values(c, 900).values()) == list(range(1, 9))
    # A binding may ask for a fresh instance per key.
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave', fresh_instance => true)")
    assert c.execute(f"SELECT fresh_instance FROM dj.makes WHERE table_name = '__outcome'").fetchone() == (True,)
    c.execute(f"DELETE FROM {SCHEMA}.__outcome WHERE case_id >= 900")
    for workers in ["NULL", "1"]:
        assert c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', 'case_id >= 900', workers => {workers})").fetchone() == (8, 0, 0)
        assert set(outcome_values(c, 900).values()) == {1}
        c.execute(f"DELETE FROM {SCHEMA}.__outcome WHERE case_id >= 900")
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave')")
    assert c.execute(f"SELECT fresh_instance FROM dj.makes WHERE table_name = '__outcome'").fetchone() == (False,)
    c.execute(f"DELETE FROM {SCHEMA}.case WHERE case_id >= 900")


@pytest.mark.parametrize("order", ["original", "reverse"])
def test_keys_read_in_batches_get_their_own_rows(pipeline, server_log, order):
    """After the first few keys, the queries a make asks are read for a whole batch of keys in one
    statement, and the batch's rows are written in one INSERT: every key still gets exactly its
    own row. A key failing in the middle of a batch (an error, rows inserted then an error) keeps
    none of its rows; a key whose rows fail only when written (a duplicate row) fails alone, and
    the batch's other keys are kept; each failure is recorded."""
    c = connect()
    # auto_explain logs the statements the make's calls run.
    c.execute("LOAD 'auto_explain'")
    c.execute("SET auto_explain.log_min_duration = 0")
    c.execute("SET auto_explain.log_nested_statements = on")
    failing = {17: "err", 30: "dup", 40: "partial"}
    with c.cursor() as cur:
        cur.executemany(f"INSERT INTO {SCHEMA}.case VALUES (%s, %s, %s)",
                        [(1000 + i, failing.get(i, "ok"), 3 * i) for i in range(60)])
    populate = f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', 'case_id >= 1000', suppress_errors => true, \"order\" => '{order}')"
    assert c.execute(populate).fetchone() == (57, 3, 3)
    assert outcome_values(c, 1000) == {1000 + i: 6 * i for i in range(60) if i not in failing}
    errors = dict(c.execute(f'SELECT case_id, error_message FROM {SCHEMA}."~~outcome" WHERE status = \'error\'').fetchall())
    assert sorted(errors) == [1017, 1030, 1040]
    assert "case 1017 refused" in errors[1017] and "duplicate key value" in errors[1030]
    assert "gave up after inserting" in errors[1040]
    log = server_log()
    # The first 8 keys read their own rows; the other 52 were read in one statement. The rows of
    # the first 8 were written in one INSERT (auto_explain logs statements that finish); the other
    # keys' rows were tried in one, which failed, then written key by key.
    assert log.count("Query Text: SELECT k.dj_key_ordinal, s.*") == 1
    assert log.count('Query Text: SELECT "mode", "n" FROM') == 8
    insert = 'Query Text: INSERT INTO "client_populate"."__outcome" ("case_id", "value", "_job_start_time", "_job_duration", "_job_version") '
    assert log.count(insert + "SELECT * FROM ROWS FROM") == 1
    assert log.count(insert + "VALUES") >= 49
    c.execute(f"DELETE FROM {SCHEMA}.__outcome WHERE case_id >= 1000")
    c.execute(f'DELETE FROM {SCHEMA}."~~outcome"')
    c.execute(f"DELETE FROM {SCHEMA}.case WHERE case_id >= 1000")
    c.close()


def test_keys_of_several_attributes_read_and_write_in_batches(pipeline, server_log):
    """The same for a key of two attributes (int32, int16): arrays of each."""
    c = connect()
    c.execute("LOAD 'auto_explain'")
    c.execute("SET auto_explain.log_min_duration = 0")
    c.execute("SET auto_explain.log_nested_statements = on")
    c.execute(f"INSERT INTO {SCHEMA}.subject VALUES (7)")
    c.execute(f"INSERT INTO {SCHEMA}.session SELECT 7, s FROM generate_series(1, 40) s")
    c.execute(f"INSERT INTO {SCHEMA}._recording SELECT 7, s, s, 10 * s * s FROM generate_series(1, 40) s")
    assert c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.SpikeRate', 'subject_id = 7')").fetchone() == (40, 0, 0)
    rates = c.execute(f"SELECT session, mean_rate FROM {SCHEMA}.__spike_rate WHERE subject_id = 7 ORDER BY 1").fetchall()
    assert rates == [(s, 10.0 * s) for s in range(1, 41)]
    log = server_log()
    assert log.count("Query Text: SELECT k.dj_key_ordinal, s.*") == 1, log
    assert log.count('Query Text: INSERT INTO "client_populate"."__spike_rate" ("subject_id", "session", "mean_rate", '
                     '"_job_start_time", "_job_duration", "_job_version") SELECT * FROM ROWS FROM') == 2
    c.execute(f"DELETE FROM {SCHEMA}.__spike_rate WHERE subject_id = 7")
    c.execute(f"DELETE FROM {SCHEMA}._recording WHERE subject_id = 7")
    c.execute(f"DELETE FROM {SCHEMA}.session WHERE subject_id = 7")
    c.execute(f"DELETE FROM {SCHEMA}.subject WHERE subject_id = 7")
    c.close()
