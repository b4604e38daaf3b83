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
