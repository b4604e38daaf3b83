"""dj.auto_populate: populate on insert. An insert into a key parent queues the target's new keys
in the inserting transaction and the worker pool makes them after the commit, with no call to
populate; a rolled-back insert queues nothing; a deleted parent row drops its queued key; chained
tables flow; a failing key is recorded and blocks nothing; a server restart loses no queued key.

    ap1.Case -> ap1.Outcome -> ap2.Outcome <- ap2.Case   (both Outcomes auto-populated)
"""
import os
import subprocess
import time

import psycopg
import pytest
from psycopg import errors

from conftest import REPO, connect
from test_workers import reconnect, until

MISBEHAVE = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()
ROLE = "dj_auto_user"
OTHER = "dj_auto_other"


def as_role(name=ROLE) -> psycopg.Connection:
    return psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), user=name, autocommit=True)


def count(c, sql: str) -> int:
    return c.execute(sql).fetchone()[0]


def made(c, schema="ap1"):
    return [r[0] for r in c.execute(f"SELECT case_id FROM {schema}.__outcome ORDER BY 1").fetchall()]


def auto_workers(c):
    return c.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'datajoint worker'"
    ).fetchone()[0]


@pytest.fixture(scope="module")
def roles():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    for s in ("ap2", "ap1"):
        c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    for r in (ROLE, OTHER):
        c.execute(f"DROP ROLE IF EXISTS {r}")
        c.execute(f"CREATE ROLE {r} LOGIN")
    c.execute(f"GRANT CREATE ON DATABASE {os.environ.get('PGDATABASE', 'datajoint')} TO {ROLE}")
    # A short idle timeout: the auto runs end soon after their last key.
    c.execute("ALTER SYSTEM SET dj.worker_idle_timeout = '2s'")
    c.execute("SELECT pg_reload_conf()")
    c.close()
    yield
    c = reconnect()
    for s in ("ap2", "ap1"):
        c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    c.execute("ALTER SYSTEM RESET dj.worker_idle_timeout")
    c.execute("SELECT pg_reload_conf()")
    until(lambda: auto_workers(c) == 0, what="the auto runs ending")
    c.execute(f"REVOKE CREATE ON DATABASE {os.environ.get('PGDATABASE', 'datajoint')} FROM {ROLE}")
    for r in (ROLE, OTHER):
        c.execute(f"DROP OWNED BY {r}")
        c.execute(f"DROP ROLE IF EXISTS {r}")
    c.close()


@pytest.fixture
def owner(roles):
    """ap1.Case -> ap1.Outcome and ap2.Case, ap1.Outcome -> ap2.Outcome, owned by an ordinary
    LOGIN role; OTHER may insert cases (and nothing else)."""
    su = reconnect()
    until(lambda: auto_workers(su) == 0, what="earlier runs ending")
    for s in ("ap2", "ap1"):
        su.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    su.close()
    c = as_role()
    c.execute("SELECT dj.declare('ap1.Case', 'manual', E'case_id : int32\\n---\\nmode : varchar(16)\\nn : int64')")
    c.execute("SELECT dj.declare('ap1.Outcome', 'computed', E'-> Case\\n---\\nvalue : int64')")
    c.execute("SELECT dj.declare('ap2.Case', 'manual', E'case_id : int32\\n---\\nmode : varchar(16)\\nn : int64')")
    c.execute("SELECT dj.declare('ap2.Outcome', 'computed', E'-> Case\\n-> ap1.Outcome\\n---\\nvalue : int64')")
    for s in ("ap1", "ap2"):
        c.execute(f"SELECT dj.set_make('{s}.Outcome', 'misbehave')")
        c.execute(f"GRANT USAGE ON SCHEMA {s} TO {OTHER}")
        c.execute(f"GRANT INSERT, DELETE, SELECT ON {s}.case TO {OTHER}")
    yield c
    c.close()
    c = as_role()  # (a restart ends the test's connection)
    c.execute("SELECT dj.auto_populate('ap1.Outcome', false)")
    c.execute("SELECT dj.auto_populate('ap2.Outcome', false)")
    c.close()


def test_only_committed_inserts_are_made_without_a_call_to_populate(owner):
    assert owner.execute("SELECT dj.auto_populate('ap1.Outcome')").fetchone() == (0,)
    owner.execute(f'GRANT SELECT ON ap1."~~outcome" TO {OTHER}')
    writer = as_role(OTHER)  # another role inserts; the makes run as the owner
    with writer.transaction():
        writer.execute("INSERT INTO ap1.case SELECT i, 'ok', i FROM generate_series(1, 5) i")
    with pytest.raises(RuntimeError):
        with writer.transaction():
            writer.execute("INSERT INTO ap1.case SELECT i, 'ok', i FROM generate_series(6, 10) i")
            # Queued in the transaction: its own rows see them pending.
            assert count(writer, "SELECT count(*) FROM dj.jobs('ap1.Outcome') WHERE status = 'pending'") >= 5
            raise RuntimeError("roll back")
    until(lambda: made(owner) == [1, 2, 3, 4, 5], what="the committed keys made")
    time.sleep(0.3)
    assert made(owner) == [1, 2, 3, 4, 5]
    assert count(owner, 'SELECT count(*) FROM ap1."~~outcome"') == 0
    assert owner.execute("SELECT value FROM ap1.__outcome WHERE case_id = 3").fetchone() == (6,)
    # The run is visible in dj.runs, as an auto run of the owner.
    run = owner.execute(
        "SELECT role_name, auto, done FROM dj.runs WHERE table_name = 'ap1.__outcome' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert run[:2] == (ROLE, True) and run[2] >= 1, run
    assert owner.execute("SELECT schema_name, table_name, role_name FROM dj.auto_populated").fetchall() == [
        ("ap1", "__outcome", ROLE)
    ]
    # Turning it on queues (and makes) the keys missing then.
    owner.execute("SELECT dj.auto_populate('ap1.Outcome', false)")
    writer.execute("INSERT INTO ap1.case VALUES (20, 'ok', 1)")
    time.sleep(0.5)
    assert 20 not in made(owner)
    assert owner.execute("SELECT dj.auto_populate('ap1.Outcome')").fetchone() == (1,)
    until(lambda: 20 in made(owner), what="the key missing when turned on")
    writer.close()


def test_a_new_row_flows_through_chained_tables(owner):
    owner.execute("SELECT dj.auto_populate('ap1.Outcome')")
    owner.execute("SELECT dj.auto_populate('ap2.Outcome')")
    with owner.transaction():
        owner.execute("INSERT INTO ap1.case VALUES (1, 'ok', 1), (2, 'ok', 2)")
        owner.execute("INSERT INTO ap2.case VALUES (1, 'ok', 10), (2, 'ok', 20), (3, 'ok', 30)")
    until(lambda: made(owner, "ap2") == [1, 2], what="the downstream keys made")
    # Key 3 waits for its upstream row; an insert upstream completes it.
    owner.execute("INSERT INTO ap1.case VALUES (3, 'ok', 3)")
    until(lambda: made(owner, "ap2") == [1, 2, 3], what="key 3 flowing through both tables")
    assert owner.execute("SELECT value FROM ap2.__outcome WHERE case_id = 3").fetchone() == (60,)


def test_a_deleted_parent_row_drops_its_queued_key_and_a_failure_blocks_nothing(owner):
    owner.execute("SELECT dj.auto_populate('ap1.Outcome')")
    writer = as_role(OTHER)
    # Keys that take 0.2 s each: most wait queued while the first ones are made.
    writer.execute(
        "INSERT INTO ap1.case SELECT i, CASE WHEN i = 4 THEN 'err' ELSE 'busy' END, 200 FROM generate_series(1, 12) i"
    )
    writer.execute("DELETE FROM ap1.case WHERE case_id = 12")
    assert count(owner, "SELECT count(*) FROM ap1.\"~~outcome\" WHERE case_id = 12") == 0
    until(lambda: len(made(owner)) == 10, seconds=30, what="the other keys made")
    time.sleep(0.3)
    assert made(owner) == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    errors_ = owner.execute("SELECT case_id, status FROM ap1.\"~~outcome\"").fetchall()
    assert errors_ == [(4, "error")], errors_
    writer.close()


def test_a_restart_loses_no_queued_key(owner):
    owner.execute("SELECT dj.auto_populate('ap1.Outcome')")
    owner.execute("INSERT INTO ap1.case SELECT i, 'busy', 100 FROM generate_series(1, 30) i")
    until(lambda: len(made(owner)) >= 3, what="keys made")
    data = subprocess.run(
        [str(REPO / "scripts" / "cluster.sh"), "--name", os.environ.get("DJ_TEST_CLUSTER", "test"), "dir"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    subprocess.run(
        ["su", "postgres", "-c", f"/usr/lib/postgresql/15/bin/pg_ctl -D {data}/data -l {data}/postgres.log -w -m immediate restart"],
        check=True, capture_output=True, env=env,
    )
    c = reconnect()
    assert len(made(c)) < 30
    # No call to populate: the launcher resumes the table's queue.
    until(lambda: len(made(c)) == 30, seconds=40, what="every key made after the restart")
    assert count(c, "SELECT count(*) FROM ap1.__outcome WHERE value = 100") == 30
    until(lambda: count(c, 'SELECT count(*) FROM ap1."~~outcome"') == 0, what="the queue empty")
    # The run that resumed the queue is an auto run of the owner.
    assert c.execute(
        "SELECT role_name, auto FROM dj.runs WHERE table_name = 'ap1.__outcome' ORDER BY id DESC LIMIT 1"
    ).fetchone() == (ROLE, True)
    c.close()


def test_auto_populate_under_enforced_tiers_and_its_refusals(owner):
    su = connect()
    for s in ("ap1", "ap2"):
        owner.execute(f"SELECT dj.enforce_tiers('{s}')")
    owner.execute("SELECT dj.auto_populate('ap1.Outcome')")
    owner.execute("SELECT dj.auto_populate('ap2.Outcome')")
    writer = as_role(OTHER)
    with writer.transaction():
        writer.execute("INSERT INTO ap1.case VALUES (1, 'ok', 1), (2, 'ok', 2)")
        writer.execute("INSERT INTO ap2.case VALUES (1, 'ok', 10), (2, 'ok', 20)")
    until(lambda: made(owner, "ap2") == [1, 2], what="the chain made under enforced tiers")
    with pytest.raises(errors.InsufficientPrivilege):
        owner.execute("INSERT INTO ap1.__outcome VALUES (7, 1)")
    # Refusals: not a Computed table, bad settings, someone else's auto populate.
    with pytest.raises(errors.WrongObjectType) as e:
        owner.execute("SELECT dj.auto_populate('ap1.Case')")
    assert e.value.diag.message_hint
    with pytest.raises(errors.InvalidParameterValue, match="workers is 0"):
        owner.execute("SELECT dj.auto_populate('ap1.Outcome', workers => 0)")
    with pytest.raises(errors.InsufficientPrivilege, match="auto populate"):
        writer.execute("SELECT dj.auto_populate('ap1.Outcome', false)")
    with pytest.raises(errors.InsufficientPrivilege):
        writer.execute("SELECT dj.auto_populate('ap1.Outcome')")
    # The catalog is the extension's: nobody writes it directly.
    with pytest.raises(errors.InsufficientPrivilege):
        owner.execute("DELETE FROM dj._auto_populate")
    writer.close()
    su.close()


def test_a_schedule_refreshes_the_queue_and_tries_failed_keys_again(owner):
    owner.execute("SELECT dj.auto_populate('ap1.Outcome', every => '1 second')")
    owner.execute("INSERT INTO ap1.case VALUES (1, 'err', 1), (2, 'ok', 2)")
    until(lambda: made(owner) == [2] and count(owner, "SELECT count(*) FROM ap1.\"~~outcome\" WHERE status = 'error'") == 1,
          what="key 2 made, key 1 failed")
    # An UPDATE queues nothing; the schedule tries the failed key again.
    owner.execute("UPDATE ap1.case SET mode = 'ok' WHERE case_id = 1")
    until(lambda: made(owner) == [1, 2], seconds=15, what="the schedule trying the failed key again")
    every, scheduled = owner.execute(
        "SELECT every, scheduled IS NOT NULL FROM dj.auto_populated WHERE schema_name = 'ap1'"
    ).fetchone()
    assert every.total_seconds() == 1 and scheduled
    with pytest.raises(errors.InvalidParameterValue, match="every"):
        owner.execute("SELECT dj.auto_populate('ap1.Outcome', every => '10 milliseconds')")
