"""Pipeline benchmark (`make bench`, BENCH_ONLY=pipeline): a three-level chain of Computed tables,
BENCH_PIPELINE_KEYS upstream keys (default 20 000), a ~1 ms make per key and table (misbehave's
busy mode), populated

- table after table, each with dj.populate(..., workers => 2) (what a script calling
  datajoint-python's populate per table does, but in our pool), and
- with dj.populate_all(..., workers => 2), which overlaps the tables,

side by side in one run, and when the last table's first row came in each (seconds after the
start). Then populate on insert (dj.auto_populate on the three tables, one worker each): the
delay from the commit of an upstream INSERT of one key (its three Case rows) to its last
downstream row, over BENCH_AUTO_KEYS keys inserted one after another (median, p99, and the first,
which starts the runs), and the time from one INSERT of all the upstream keys to the last row.
"""
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "client"))
from conftest import connect  # noqa: E402

KEYS = int(os.environ.get("BENCH_PIPELINE_KEYS", "20000"))
LEVELS = ["pb1", "pb2", "pb3"]
MISBEHAVE = (ROOT / "udfs" / "components" / "misbehave.wasm").read_bytes()


def setup(c):
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    for s in reversed(LEVELS):
        c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    for i, s in enumerate(LEVELS):
        c.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{s}.Case", "case_id : int32\n---\nmode : varchar(16)\nn : int64"))
        parent = f"-> {LEVELS[i - 1]}.Outcome\n" if i else ""
        c.execute(
            "SELECT dj.declare(%s, 'computed', %s)",
            (f"{s}.Outcome", f"-> Case\n{parent}---\nvalue : int64"),
        )
        c.execute(f"ALTER TABLE {s}.__outcome ADD COLUMN made timestamptz DEFAULT clock_timestamp()")
        c.execute(f"SELECT dj.set_make('{s}.Outcome', 'misbehave')")
        c.execute(f"INSERT INTO {s}.case SELECT i, 'busy', 1 FROM generate_series(1, {KEYS}) i")


def clear(c):
    c.execute(f"SELECT dj.delete('{LEVELS[0]}.Outcome')")  # and everything downstream
    for s in LEVELS:
        c.execute(f'TRUNCATE {s}."~~outcome"')
        c.execute(f"VACUUM ANALYZE {s}.__outcome")


def first_of_last(c, started):
    first = c.execute(f"SELECT extract(epoch FROM min(made)) FROM {LEVELS[-1]}.__outcome").fetchone()[0]
    return float(first) - started


def auto_latency(c, n):
    """Inserts n new keys one at a time (each committed alone) and returns, for each, the seconds
    from its commit to its row in the last table."""
    for s in LEVELS:
        c.execute(f"SELECT dj.auto_populate('{s}.Outcome')")
    delays = []
    for k in range(KEYS + 1, KEYS + n + 1):
        with c.transaction():
            for s in LEVELS:
                c.execute(f"INSERT INTO {s}.case VALUES ({k}, 'busy', 1)")
        committed = time.time()
        while True:
            row = c.execute(
                f"SELECT extract(epoch FROM made) FROM {LEVELS[-1]}.__outcome WHERE case_id = {k}"
            ).fetchone()
            if row:
                break
            time.sleep(0.0005)
        delays.append(float(row[0]) - committed)
    return delays


def auto_bulk(c):
    """With auto populate on, one INSERT of every upstream key (three tables, one transaction):
    seconds from its commit to the last table's last row."""
    clear(c)
    for s in LEVELS:
        c.execute(f"TRUNCATE {s}.case CASCADE")
        c.execute(f"TRUNCATE {s}.\"~~outcome\"")
    with c.transaction():
        for s in LEVELS:
            c.execute(f"INSERT INTO {s}.case SELECT i, 'busy', 1 FROM generate_series(1, {KEYS}) i")
    committed = time.time()
    while c.execute(f"SELECT count(*) FROM {LEVELS[-1]}.__outcome").fetchone()[0] < KEYS:
        time.sleep(0.05)
    last = c.execute(f"SELECT extract(epoch FROM max(made)) FROM {LEVELS[-1]}.__outcome").fetchone()[0]
    return float(last) - committed


def main():
    c = connect()
    setup(c)
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    clear(c)
    t0 = time.time()
    for s in LEVELS:
        r = c.execute(f"SELECT * FROM dj.populate('{s}.Outcome', workers => 2)").fetchone()
        assert r == (KEYS, 0, 0), r
    sequential = time.time() - t0
    sequential_first = first_of_last(c, t0)
    clear(c)
    t0 = time.time()
    rows = c.execute(f"SELECT * FROM dj.populate_all(ARRAY{LEVELS!r}, workers => 2)").fetchall()
    together = time.time() - t0
    assert all(r[1:] == ("done", KEYS, 0, 0) for r in rows), rows
    together_first = first_of_last(c, t0)
    print(f"\n== pipeline benchmark, {when}, {platform.node()} ({os.cpu_count()} cores, "
          f"PostgreSQL {c.execute('SHOW server_version').fetchone()[0]}, release build)")
    print(f"three Computed tables in a chain, {KEYS} keys each, ~1 ms make per key (busy), 2 workers:")
    print(f"  table after table (populate, workers => 2)  {sequential:8.2f} s  "
          f"{3 * KEYS / sequential:8.0f} keys/s  last table's first row after {sequential_first:6.2f} s")
    print(f"  dj.populate_all(workers => 2)               {together:8.2f} s  "
          f"{3 * KEYS / together:8.0f} keys/s  last table's first row after {together_first:6.2f} s")
    print(f"  populate_all over table after table         {sequential / together:8.2f}x")
    n = int(os.environ.get("BENCH_AUTO_KEYS", "200"))
    delays = auto_latency(c, n)
    ordered = sorted(delays[1:])
    print(f"populate on insert (dj.auto_populate on all three, 1 worker each), {n} keys inserted one at a time:")
    print(f"  commit to last table's row: first {delays[0] * 1000:7.1f} ms (starts the runs), "
          f"median {ordered[len(ordered) // 2] * 1000:6.1f} ms, "
          f"p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000:6.1f} ms")
    bulk = auto_bulk(c)
    print(f"  one INSERT of {KEYS} upstream keys: last table's last row after {bulk:6.2f} s "
          f"(populate_all, workers => 2: {together:.2f} s)")
    for s in LEVELS:
        c.execute(f"SELECT dj.auto_populate('{s}.Outcome', false)")
    for s in reversed(LEVELS):
        c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")


if __name__ == "__main__":
    main()
