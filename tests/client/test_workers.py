"""The worker pool and DataJoint's job queue, on a real cluster with real background workers:
populate(workers => n), populate_async / dj.runs / dj.wait / dj.cancel, the ~~name jobs table
shared with datajoint-python 2.3.5, the role a worker runs keys as, cancels, killed workers and
an immediate restart."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest
from psycopg import errors

from conftest import REPO, connect, execute_in_thread, wait_until_active
from test_populate import signal_masks

SCHEMA = "client_workers"
MISBEHAVE = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()
ROLE = "dj_pool_user"


def reconnect(attempts: int = 300) -> psycopg.Connection:
    """A connection once the server accepts them again (after a crash restart)."""
    for _ in range(attempts):
        try:
            c = connect()
            c.execute("SELECT 1")
            return c
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise AssertionError("the server did not come back")


def workers(c) -> list:
    return c.execute(
        "SELECT pid, query FROM pg_stat_activity WHERE backend_type = 'datajoint worker' ORDER BY pid"
    ).fetchall()


def until(condition, seconds: float = 20, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds} s")


@pytest.fixture(scope="module")
def setup():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute("ALTER SYSTEM SET dj.max_workers = 8")
    c.execute("SELECT pg_reload_conf()")
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute(f"DROP ROLE IF EXISTS {ROLE}")
    c.execute(f"CREATE ROLE {ROLE} LOGIN")
    c.execute(f"CREATE SCHEMA {SCHEMA} AUTHORIZATION {ROLE}")
    c.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    c.close()
    yield
    c = reconnect()
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute("DELETE FROM dj.makes")
    c.execute(f"DROP ROLE IF EXISTS {ROLE}")
    c.execute("ALTER SYSTEM RESET dj.max_workers")
    c.execute("SELECT pg_reload_conf()")
    c.close()


@pytest.fixture
def cluster(setup):
    """A superuser connection (the crash tests end it; each test gets its own)."""
    c = reconnect()
    yield c
    c.close()


def as_role() -> psycopg.Connection:
    return psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), user=ROLE, autocommit=True)


@pytest.fixture
def pipeline(cluster):
    """Case/Outcome (misbehave make) owned by an ordinary LOGIN role; `fill(rows)` adds cases."""
    owner = as_role()
    owner.execute(f"DROP TABLE IF EXISTS {SCHEMA}.\"~~outcome\", {SCHEMA}.__outcome, {SCHEMA}.case CASCADE")
    owner.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.Case", "case_id : int32\n---\nmode : varchar(16)\nn : int64"))
    owner.execute("SELECT dj.declare(%s, 'computed', %s)", (f"{SCHEMA}.Outcome", "-> Case\n---\nvalue : int64"))
    owner.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave')")

    def fill(rows):
        with owner.cursor() as cur:
            cur.executemany(f"INSERT INTO {SCHEMA}.case VALUES (%s, %s, %s)", rows)

    owner.fill = fill
    yield owner
    c = reconnect()
    until(lambda: not workers(c), what="the workers ending")
    c.close()
    owner.close()


def count(c, sql: str) -> int:
    return c.execute(sql).fetchone()[0]


def run_row(c, run_id: int) -> dict:
    cur = c.execute("SELECT * FROM dj.runs WHERE id = %s", (run_id,))
    names = [d.name for d in cur.description]
    row = cur.fetchone()
    return dict(zip(names, row)) if row else {}


def test_the_pool_makes_every_key_once_and_success_empties_the_queue(pipeline, cluster, server_log):
    pipeline.fill([(i, "ok", i) for i in range(1, 301)])
    assert pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)").fetchone() == (300, 0, 0)
    assert count(pipeline, f"SELECT count(*) FROM {SCHEMA}.__outcome WHERE value = 2 * case_id") == 300
    # datajoint-python's default: a success deletes the key's job row.
    assert count(pipeline, f'SELECT count(*) FROM {SCHEMA}."~~outcome"') == 0
    run = pipeline.execute("SELECT * FROM dj.runs ORDER BY id DESC LIMIT 1").fetchone()
    last = run_row(pipeline, run[0])
    assert (last["state"], last["done"], last["errors"], last["remaining"], last["workers"]) == ("done", 300, 0, 0, 2)
    assert last["role_name"] == ROLE and last["table_name"] == f"{SCHEMA}.__outcome"
    # Nothing left: a second run finds nothing to do.
    assert pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)").fetchone() == (0, 0, 0)


def test_workers_are_datajoint_workers_running_keys_as_the_role_that_asked(pipeline, cluster, server_log):
    pipeline.fill([(i, "busy", 150) for i in range(1, 13)])
    run_id = pipeline.execute(f"SELECT dj.populate_async('{SCHEMA}.Outcome', workers => 2)").fetchone()[0]
    seen = until(lambda: [w for w in workers(cluster) if w[1] and "key (case_id=" in w[1]], what="a worker's key")
    assert f"populate \"{SCHEMA}\".\"__outcome\" key (case_id=" in seen[0][1]
    # The reservation carries the asking role and the worker's own backend.
    reserved = until(lambda: cluster.execute(
        f'SELECT "user", connection_id, pid, host, version FROM {SCHEMA}."~~outcome" WHERE status = \'reserved\''
    ).fetchall(), what="a reservation")
    pids = {w[0] for w in workers(cluster)}
    assert all(r[0] == ROLE for r in reserved), reserved
    assert {r[1] for r in reserved} <= pids and all(r[1] == r[2] for r in reserved)
    sha = cluster.execute("SELECT sha256 FROM dj.modules WHERE name = 'misbehave'").fetchone()[0]
    assert all(r[4] == sha[:64] for r in reserved)
    assert run_row(pipeline, run_id)["state"] == "running"
    # A worker's own threads (wasmtime's epoch ticker, WASI's runtime) take no signal; its main
    # thread takes SIGTERM (PostgreSQL's die) and SIGINT.
    pid = seen[0][0]
    masks = signal_masks(pid)
    extra = {tid: m for tid, m in masks.items() if tid != pid}
    assert extra, "a worker running a make has the epoch ticker"
    for tid, (name, blocked) in extra.items():
        for sig in (2, 10, 14, 15):
            assert blocked & (1 << (sig - 1)), f"worker thread {name} ({tid}) may take signal {sig}"
    assert not masks[pid][1] & ((1 << 14) | (1 << 1)), "the worker's main thread blocks SIGTERM or SIGINT"
    assert pipeline.execute("SELECT state, done, errors, remaining FROM dj.wait(%s)", (run_id,)).fetchone() == ("done", 12, 0, 0)
    assert count(pipeline, f"SELECT count(*) FROM {SCHEMA}.__outcome") == 12


def test_a_role_that_may_not_read_an_ancestor_gets_42501_for_its_keys(pipeline, cluster, server_log):
    pipeline.fill([(1, "ok", 1), (2, "ok", 2)])
    cluster.execute("DROP ROLE IF EXISTS dj_pool_reader")
    cluster.execute("CREATE ROLE dj_pool_reader LOGIN")
    pipeline.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO dj_pool_reader")
    # The key source (case_id) is readable; the make's fetch of mode and n is not.
    pipeline.execute(f"GRANT SELECT (case_id) ON {SCHEMA}.case TO dj_pool_reader")
    pipeline.execute(f"GRANT SELECT, INSERT ON {SCHEMA}.__outcome TO dj_pool_reader")
    pipeline.execute(f"SELECT dj.jobs_refresh('{SCHEMA}.Outcome')")
    pipeline.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {SCHEMA}."~~outcome" TO dj_pool_reader')
    reader = psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), user="dj_pool_reader", autocommit=True)
    done = reader.execute(
        f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', suppress_errors => true, workers => 2)"
    ).fetchone()
    assert done == (0, 2, 2)
    errors_ = pipeline.execute(
        f"SELECT \"user\", error_message FROM {SCHEMA}.\"~~outcome\" WHERE status = 'error'"
    ).fetchall()
    assert len(errors_) == 2 and all(u == "dj_pool_reader" and "permission denied" in m for u, m in errors_), errors_
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table case"):
        reader.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 1)")
    reader.close()
    # The owner's run retries the failed keys (as in-backend populate does).
    assert pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 1)").fetchone() == (2, 0, 0)
    pipeline.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM dj_pool_reader")
    pipeline.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM dj_pool_reader")
    cluster.execute("DROP ROLE dj_pool_reader")


def test_failures_stop_the_run_or_are_recorded_and_retried(pipeline, cluster, server_log):
    pipeline.fill([(1, "ok", 1), (2, "err", 0), (3, "ok", 3)])
    with pytest.raises(errors.ExternalRoutineException, match=r"make of .* failed for key \(case_id=2\).*case 2 refused"):
        pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 1)")
    assert count(pipeline, f"SELECT count(*) FROM {SCHEMA}.\"~~outcome\" WHERE status = 'error'") == 1
    assert pipeline.execute(
        f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', suppress_errors => true, workers => 2)"
    ).fetchone()[1:] == (1, 1)
    # Retries: the key is tried three times, 1 s then 2 s apart, then recorded as an error.
    t = time.monotonic()
    run_id = pipeline.execute(
        f"SELECT dj.populate_async('{SCHEMA}.Outcome', suppress_errors => true, retries => 2)"
    ).fetchone()[0]
    assert pipeline.execute("SELECT state, done, errors FROM dj.wait(%s)", (run_id,)).fetchone() == ("done", 0, 1)
    assert time.monotonic() - t >= 3
    row = pipeline.execute(f"SELECT status, error_message FROM {SCHEMA}.\"~~outcome\"").fetchone()
    assert row[0] == "error" and "case 2 refused" in row[1]
    # Ignored keys are never taken; cleared errors are queued again.
    assert pipeline.execute(f"SELECT dj.jobs_ignore('{SCHEMA}.Outcome', 'case_id = 2')").fetchone() == (1,)
    assert pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 1)").fetchone() == (0, 0, 1)
    jobs = pipeline.execute(f"SELECT key, status FROM dj.jobs('{SCHEMA}.Outcome')").fetchall()
    assert jobs == [({"case_id": 2}, "ignore")]
    pipeline.execute(f"DELETE FROM {SCHEMA}.\"~~outcome\"")


def test_cancelling_the_caller_cancels_the_run_and_its_keys_go_back_to_pending(pipeline, cluster, server_log):
    pipeline.fill([(i, "busy", 200) for i in range(1, 21)])
    caller = connect()
    pid = caller.info.backend_pid
    thread, outcome = execute_in_thread(caller, f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)")
    wait_until_active(cluster, pid)
    until(lambda: count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome") >= 2, what="two keys made")
    assert cluster.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]
    thread.join(10)
    assert isinstance(outcome["error"], errors.QueryCanceled), outcome
    until(lambda: not workers(cluster), seconds=5, what="the workers stopping")
    run = cluster.execute(
        "SELECT id, state, done FROM dj.runs WHERE table_name = %s ORDER BY id DESC LIMIT 1", (f"{SCHEMA}.__outcome",)
    ).fetchone()
    assert run[1] == "cancelled"
    made = count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome")
    assert made == run[2] and made < 20
    statuses = dict(cluster.execute(f'SELECT status::text, count(*) FROM {SCHEMA}."~~outcome" GROUP BY 1').fetchall())
    assert statuses == {"pending": 20 - made}, statuses
    # A new run finishes the rest, each key once.
    assert caller.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)").fetchone() == (20 - made, 0, 0)
    caller.close()


def test_an_async_run_outlives_its_session_and_dj_cancel_stops_it(pipeline, cluster, server_log):
    pipeline.fill([(i, "busy", 200) for i in range(1, 31)])
    starter = as_role()
    run_id = starter.execute(f"SELECT dj.populate_async('{SCHEMA}.Outcome', workers => 1)").fetchone()[0]
    starter.close()
    until(lambda: count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome") >= 2, what="keys made after disconnect")
    assert run_row(pipeline, run_id)["state"] == "running"
    # Another role cannot see or cancel it.
    cluster.execute("DROP ROLE IF EXISTS dj_pool_other")
    cluster.execute("CREATE ROLE dj_pool_other LOGIN")
    other = psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), user="dj_pool_other", autocommit=True)
    assert other.execute("SELECT count(*) FROM dj.runs WHERE id = %s", (run_id,)).fetchone() == (0,)
    with pytest.raises(errors.UndefinedObject):
        other.execute("SELECT dj.cancel(%s)", (run_id,))
    other.close()
    cluster.execute("DROP ROLE dj_pool_other")
    assert pipeline.execute("SELECT dj.cancel(%s)", (run_id,)).fetchone() == (True,)
    state, done, *_ = pipeline.execute("SELECT * FROM dj.wait(%s)", (run_id,)).fetchone()
    assert state == "cancelled" and 2 <= done < 30
    assert count(cluster, f"SELECT count(*) FROM {SCHEMA}.\"~~outcome\" WHERE status = 'reserved'") == 0


def crash_and_finish(pipeline, cluster, crash, n: int):
    """Starts a run of n busy keys, crashes the server mid-run with `crash`, then checks that the
    reservations come back and a new run makes every key exactly once."""
    pipeline.fill([(i, "busy", 100) for i in range(1, n + 1)])
    run_id = pipeline.execute(f"SELECT dj.populate_async('{SCHEMA}.Outcome', workers => 2)").fetchone()[0]
    until(lambda: count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome") >= 3, what="keys made")
    crash()
    c = reconnect()
    owner = as_role()
    made = count(c, f"SELECT count(*) FROM {SCHEMA}.__outcome")
    assert made < n
    assert run_row(owner, run_id)["state"] == "interrupted"
    # What the dead workers held is still reserved, by processes that no longer exist; the next run
    # puts it back to pending by liveness (refresh does it too).
    assert count(c, f"SELECT count(*) FROM {SCHEMA}.\"~~outcome\" WHERE status = 'reserved' "
                    "AND connection_id IN (SELECT pid FROM pg_stat_activity)") == 0
    assert owner.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)").fetchone() == (n - made, 0, 0)
    assert count(c, f"SELECT count(*) FROM {SCHEMA}.__outcome WHERE value = 100") == n
    assert count(c, f"SELECT count(*) FROM {SCHEMA}.\"~~outcome\"") == 0
    owner.close()
    return c


def test_a_killed_worker_loses_only_its_key_in_flight(pipeline, cluster):
    def kill():
        pid = until(lambda: workers(cluster), what="a worker")[0][0]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)

    c = crash_and_finish(pipeline, cluster, kill, 30)
    c.close()


def test_an_immediate_restart_mid_run_loses_nothing(pipeline, cluster):
    def restart():
        data = subprocess.run([str(REPO / "scripts" / "cluster.sh"), "--name", os.environ.get("DJ_TEST_CLUSTER", "test"), "dir"],
                              check=True, capture_output=True, text=True).stdout.strip()
        # (su keeps this environment: the server must not get RUST_BACKTRACE, see scripts/cluster.sh.)
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
        subprocess.run(["su", "postgres", "-c", f"/usr/lib/postgresql/15/bin/pg_ctl -D {data}/data -l {data}/postgres.log -w -m immediate restart"],
                       check=True, capture_output=True, env=env)

    c = crash_and_finish(pipeline, cluster, restart, 30)
    c.close()


DJPY_WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {client!r})
    from conftest import connect_datajoint
    import datajoint as dj
    connect_datajoint()
    schema = dj.Schema({schema!r}, create_schema=False, create_tables=False)

    @schema
    class Case(dj.Manual):
        definition = "case_id : int32\\n---\\nmode : varchar(16)\\nn : int64"

    @schema
    class Outcome(dj.Computed):
        definition = "-> Case\\n---\\nvalue : int64"
        def make(self, key):
            n = (Case & key).fetch1("n")
            self.insert1(dict(key, value=2 * n))

    if sys.argv[1:] == ["jobs"]:
        print(len(Outcome.jobs & "status = 'pending'"), len(Outcome.jobs))
    else:
        Outcome.populate(reserve_jobs=True, display_progress=False)
        print(len(Outcome()))
    """
)


def test_callers_and_datajoint_python_share_one_queue(pipeline, cluster, server_log):
    n = 20000
    pipeline.fill([(i, "ok", i) for i in range(1, n + 1)])
    # The jobs table exists and is full before datajoint-python looks at it.
    pipeline.execute(f"SELECT dj.jobs_refresh('{SCHEMA}.Outcome')")
    script = DJPY_WORKER.format(client=str(REPO / "tests" / "client"), schema=SCHEMA)
    # datajoint-python's Table.jobs is our queue.
    seen = subprocess.run([sys.executable, "-c", script, "jobs"], capture_output=True, text=True, timeout=120)
    assert seen.returncode == 0, seen.stderr[-3000:]
    assert seen.stdout.splitlines()[-1].split() == [str(n), str(n)], seen.stdout
    python = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    callers = [connect() for _ in range(3)]
    threads = [execute_in_thread(c, f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)") for c in callers]
    results = []
    for thread, outcome in threads:
        thread.join(300)
        assert "row" in outcome, outcome
        results.append(outcome["row"])
    for p in python:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    ours = sum(r[0] for r in results)
    assert all(r[1] == 0 for r in results)
    assert count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome") == n
    assert count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome WHERE value = 2 * case_id") == n
    made_by_python = count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome WHERE _job_version IS NULL OR _job_version = ''")
    assert ours + made_by_python == n, (results, made_by_python)
    assert count(cluster, f"SELECT count(*) FROM {SCHEMA}.\"~~outcome\" WHERE status <> 'pending'") == 0
    for c in callers:
        c.close()


def test_under_enforced_tiers_a_reservation_lets_its_holder_write_its_keys(pipeline, cluster, server_log):
    n = 1500
    pipeline.fill([(i, "ok", i) for i in range(1, n + 1)])
    pipeline.execute(f"SELECT dj.enforce_tiers('{SCHEMA}')")
    try:
        client = as_role()
        insert = f"INSERT INTO {SCHEMA}.__outcome (case_id, value) VALUES (%s, %s)"
        with pytest.raises(errors.InsufficientPrivilege, match="enforces DataJoint tiers"):
            client.execute(insert, (1, 2))
        client.execute(f"SELECT dj.jobs_refresh('{SCHEMA}.Outcome')")
        assert client.execute(f"SELECT dj.jobs_reserve('{SCHEMA}.Outcome', 'case_id = 1')").fetchone() == ({"case_id": 1},)
        # The holder of key 1 may write key 1, not key 2 (nor both at once).
        with pytest.raises(errors.InsufficientPrivilege, match="does not hold the reservation"):
            client.execute(insert, (2, 4))
        with pytest.raises(errors.InsufficientPrivilege, match="does not hold the reservation"):
            client.execute(f"INSERT INTO {SCHEMA}.__outcome (case_id, value) VALUES (1, 2), (2, 4)")
        client.execute(insert, (1, 2))
        client.execute(f'DELETE FROM {SCHEMA}."~~outcome" WHERE case_id = 1')
        # Other writes stay refused, reservation or not.
        with pytest.raises(errors.InsufficientPrivilege):
            client.execute(f"UPDATE {SCHEMA}.__outcome SET value = 0")
        client.close()
        # datajoint-python's populate(reserve_jobs=True) side by side with our workers.
        script = DJPY_WORKER.format(client=str(REPO / "tests" / "client"), schema=SCHEMA)
        python = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(2)]
        until(lambda: count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome") >= 50, seconds=60,
              what="datajoint-python making keys")
        ours = pipeline.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome', workers => 2)").fetchone()
        for p in python:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        assert ours[1] == 0
        assert count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome WHERE value = 2 * case_id") == n
        by_python = count(cluster, f"SELECT count(*) FROM {SCHEMA}.__outcome WHERE _job_version IS NULL OR _job_version = ''")
        assert by_python >= 50 and ours[0] > 0 and ours[0] + by_python == n, (ours, by_python)
    finally:
        pipeline.execute(f"SELECT dj.enforce_tiers('{SCHEMA}', false)")


def test_a_database_with_a_run_under_way_can_still_be_dropped(cluster, server_log):
    """Workers are connected to their database; DROP DATABASE ... WITH (FORCE) ends them (SIGTERM
    is PostgreSQL's die, so a running guest stops), and once a run has ended its workers are gone."""
    cluster.execute("DROP DATABASE IF EXISTS dj_pool_drop")
    cluster.execute("CREATE DATABASE dj_pool_drop")
    other = psycopg.connect(dbname="dj_pool_drop", autocommit=True)
    other.execute("CREATE EXTENSION datajoint")
    other.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    other.execute("SELECT dj.declare('d.Case', 'manual', %s)", ("case_id : int32\n---\nmode : varchar(16)\nn : int64",))
    other.execute("SELECT dj.declare('d.Outcome', 'computed', %s)", ("-> Case\n---\nvalue : int64",))
    other.execute("SELECT dj.set_make('d.Outcome', 'misbehave')")
    other.execute("INSERT INTO d.case SELECT i, 'ok', i FROM generate_series(1, 5) i")
    assert other.execute("SELECT * FROM dj.populate('d.Outcome', workers => 2)").fetchone() == (5, 0, 0)
    other.execute("INSERT INTO d.case SELECT i, 'busy', 300 FROM generate_series(6, 40) i")
    other.execute("SELECT dj.populate_async('d.Outcome', workers => 2)")
    other.close()
    until(lambda: [w for w in workers(cluster) if w[1] and "d\".\"__outcome\" key" in w[1]], what="a worker's key")
    t = time.monotonic()
    cluster.execute("DROP DATABASE dj_pool_drop WITH (FORCE)")
    assert time.monotonic() - t < 5
    until(lambda: not workers(cluster), seconds=5, what="the workers ending")


def test_no_free_worker_slot_is_a_clear_error(pipeline, cluster, server_log):
    """max_worker_processes (16 on the test cluster) runs out before a raised dj.max_workers."""
    cluster.execute("ALTER SYSTEM SET dj.max_workers = 64")
    cluster.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)
    pipeline.fill([(i, "busy", 500) for i in range(1, 41)])
    runs = []
    try:
        with pytest.raises(errors.ConfigurationLimitExceeded, match="max_worker_processes") as refused:
            for _ in range(4):
                runs.append(pipeline.execute(f"SELECT dj.populate_async('{SCHEMA}.Outcome', workers => 16)").fetchone()[0])
        assert "max_worker_processes" in (refused.value.diag.message_hint or "")
        assert runs, "the first run got workers"
    finally:
        for run_id in runs:
            pipeline.execute("SELECT dj.cancel(%s)", (run_id,))
        for run_id in runs:
            pipeline.execute("SELECT * FROM dj.wait(%s)", (run_id,))
        cluster.execute("ALTER SYSTEM SET dj.max_workers = 8")
        cluster.execute("SELECT pg_reload_conf()")
