"""dj.populate_all: a whole pipeline in dependency order, in the worker pool, tables overlapping.

The pipeline: four schemas, each with its own Case table (misbehave reads "Case" in its target's
schema), and an Outcome per schema that also depends on the Outcomes upstream of it:

    pa1.Outcome <- pa2.Outcome <- pa4.Outcome (+ part Detail)
               \\<- pa3.Outcome <-/                  (a diamond, three levels)
"""
import time

import psycopg
import pytest
from psycopg import errors

from conftest import REPO, connect

SCHEMAS = ["pa1", "pa2", "pa3", "pa4"]
UPSTREAM = {"pa1": [], "pa2": ["pa1"], "pa3": ["pa1"], "pa4": ["pa2", "pa3"]}
MISBEHAVE = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()
KEYS = 40


def declare(c, modes):
    for s in SCHEMAS:
        c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    for s in SCHEMAS:
        c.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{s}.Case", "case_id : int32\n---\nmode : varchar(16)\nn : int64"))
        parents = "".join(f"-> {u}.Outcome\n" for u in UPSTREAM[s])
        c.execute("SELECT dj.declare(%s, 'computed', %s)", (f"{s}.Outcome", f"-> Case\n{parents}---\nvalue : int64"))
        c.execute(f"SELECT dj.set_make('{s}.Outcome', 'misbehave')")
        mode, n = modes.get(s, ("sleep", 3))
        c.execute(f"INSERT INTO {s}.case SELECT i, %s, %s FROM generate_series(1, {KEYS}) i", (mode, n))
    c.execute("SELECT dj.declare('pa4.Outcome.Detail', 'part', E'-> master\\ndetail : int32')")


def contents(c):
    out = {}
    for s in SCHEMAS:
        out[s] = c.execute(f"SELECT case_id, value FROM {s}.__outcome ORDER BY 1").fetchall()
    out["detail"] = c.execute("SELECT case_id, detail FROM pa4.__outcome__detail ORDER BY 1, 2").fetchall()
    return out


@pytest.fixture
def c():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    yield c
    for s in SCHEMAS:
        c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    c.close()


def test_populate_all_gives_the_rows_of_populating_each_table_in_order(c):
    declare(c, {"pa4": ("parts", 3)})
    rows = c.execute("SELECT * FROM dj.populate_all(ARRAY['pa1', 'pa2', 'pa3', 'pa4'], workers => 2)").fetchall()
    assert [r[0] for r in rows] == ["pa1.__outcome", "pa2.__outcome", "pa3.__outcome", "pa4.__outcome"], rows
    assert all(r[1:] == ("done", KEYS, 0, 0) for r in rows), rows
    together = contents(c)
    assert len(together["pa4"]) == KEYS and len(together["detail"]) == 3 * KEYS
    # The same pipeline populated table by table, in this backend.
    c.execute("SELECT dj.delete('pa1.Outcome')")  # and everything downstream
    assert all(not v for v in contents(c).values())
    for s in SCHEMAS:
        assert c.execute(f"SELECT * FROM dj.populate('{s}.Outcome')").fetchone() == (KEYS, 0, 0)
    assert contents(c) == together
    # The runs: one per table, all of the pipeline, visible in dj.runs.
    pipeline = c.execute("SELECT max(pipeline) FROM dj.runs").fetchone()[0]
    runs = c.execute(
        "SELECT table_name, state, done FROM dj.runs WHERE pipeline = %s ORDER BY id", (pipeline,)
    ).fetchall()
    assert runs == [(r[0], "done", KEYS) for r in rows], runs


def test_populate_all_overlaps_tables(c):
    """With workers => 2 the downstream tables start before the upstream one is done: a key is
    taken as soon as its upstream rows are there."""
    declare(c, {"pa1": ("busy", 30)})  # 1.2 s of computing upstream, 0.6 s on two workers
    c.execute("ALTER TABLE pa1.__outcome ADD COLUMN made timestamptz DEFAULT clock_timestamp()")
    c.execute("ALTER TABLE pa4.__outcome ADD COLUMN made timestamptz DEFAULT clock_timestamp()")
    run = c.execute("SELECT dj.populate_all_async(ARRAY['pa1', 'pa2', 'pa3', 'pa4'], workers => 2)").fetchone()[0]
    state = c.execute("SELECT state, done, errors FROM dj.wait(%s)", (run,)).fetchone()
    assert state == ("done", KEYS, 0), state
    first_downstream, last_upstream = c.execute(
        "SELECT (SELECT min(made) FROM pa4.__outcome), (SELECT max(made) FROM pa1.__outcome)"
    ).fetchone()
    assert first_downstream < last_upstream, (first_downstream, last_upstream)
    assert c.execute("SELECT count(*) FROM pa4.__outcome").fetchone()[0] == KEYS
    # Every job row went with its key.
    for s in SCHEMAS:
        assert c.execute(f'SELECT count(*) FROM {s}."~~outcome"').fetchone()[0] == 0


def test_populate_all_failures_cancel_and_refusals(c):
    declare(c, {"pa2": ("err", 3)})
    # A failed key fails the pipeline (its error and HINT), as populate does; its downstream
    # tables are left undone.
    with pytest.raises(psycopg.Error, match='make of "pa2"."__outcome" failed') as e:
        c.execute("SELECT * FROM dj.populate_all(ARRAY['pa1', 'pa2', 'pa3', 'pa4'], workers => 2)")
    assert "suppress_errors" in e.value.diag.message_hint
    # With suppress_errors every key that can be made is, the failures recorded.
    c.execute("SELECT dj.delete('pa1.Outcome')")
    rows = dict(
        (r[0], r[1:])
        for r in c.execute(
            "SELECT table_name, state, done, errors FROM dj.populate_all(ARRAY['pa1', 'pa2', 'pa3', 'pa4'], "
            "suppress_errors => true, workers => 2)"
        ).fetchall()
    )
    assert rows["pa1.__outcome"] == ("done", KEYS, 0)
    assert rows["pa2.__outcome"] == ("done", 0, KEYS)
    assert rows["pa3.__outcome"] == ("done", KEYS, 0)
    assert rows["pa4.__outcome"] == ("done", 0, 0)
    # Cancel: every table's run ends cancelled or interrupted, nothing is left reserved.
    c.execute("UPDATE pa1.case SET mode = 'busy', n = 200")
    c.execute("SELECT dj.delete('pa1.Outcome')")
    run = c.execute("SELECT dj.populate_all_async(ARRAY['pa1', 'pa3'], workers => 1)").fetchone()[0]
    time.sleep(0.5)
    assert c.execute("SELECT dj.cancel(%s)", (run,)).fetchone()[0] is True
    assert c.execute("SELECT state FROM dj.wait(%s)", (run,)).fetchone()[0] == "cancelled"
    states = c.execute("SELECT state FROM dj.runs WHERE pipeline = %s ORDER BY id", (run,)).fetchall()
    assert states[0] == ("cancelled",) and states[1][0] in ("cancelled", "interrupted"), states
    assert c.execute("SELECT count(*) FROM pa1.\"~~outcome\" WHERE status = 'reserved'").fetchone()[0] == 0
    # Refusals.
    with pytest.raises(errors.InvalidParameterValue, match="no Computed or Imported table") as e:
        c.execute("SELECT * FROM dj.populate_all(ARRAY['pa1.Case'])")
    assert e.value.diag.message_hint
    with pytest.raises(errors.InvalidParameterValue, match="workers is 0"):
        c.execute("SELECT * FROM dj.populate_all(ARRAY['pa1'], workers => 0)")


def test_populate_all_under_enforced_tiers(c):
    """The pool's writes pass the tier guard, each table's make only into its own tables; a
    client's write into a Computed table stays refused."""
    declare(c, {"pa4": ("parts", 2)})
    for s in SCHEMAS:
        c.execute(f"SELECT dj.enforce_tiers('{s}')")
    rows = c.execute("SELECT * FROM dj.populate_all(ARRAY['pa1', 'pa2', 'pa3', 'pa4'], workers => 2)").fetchall()
    assert all(r[1:] == ("done", KEYS, 0, 0) for r in rows), rows
    assert c.execute("SELECT count(*) FROM pa4.__outcome__detail").fetchone()[0] == 2 * KEYS
    with pytest.raises(errors.InsufficientPrivilege):
        c.execute("INSERT INTO pa1.__outcome VALUES (1000, 1)")
