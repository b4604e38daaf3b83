"""Populate benchmarks, measured side by side in one run on one cluster (`make bench`).

P1  a trivial make (fetch one upstream row, insert one row) over N keys (default 100 000):
    our dj.populate with the Rust component udfs/components/spike_rate.wasm, against
    - the plain SQL INSERT ... SELECT computing the same rows, and
    - datajoint-python 2.3.5 populate of the same table with a Python make (on a subset:
      BENCH_DJPY_KEYS, default 2 000, as it runs at a few hundred keys per second).
    Also the Python component (udfs/components/quality.wasm) through our populate, on BENCH_PY_KEYS
    (default 20 000; its first key, which instantiates the 19.5 MB component, shown apart).
P2  the worker pool: a CPU-bound make (~10 ms of computing per key, misbehave's busy mode) over 400
    keys with workers => 1 and workers => 2 (target: at least 1.8x on 2 cores), and in this backend;
    the trivial make of P1 over all N keys through the pool (workers => 1) against this backend's
    populate: the difference per key is what the job queue costs (the queue filled, keys reserved
    in batches, each key's own transaction and the deletion of its job row; target < 100 us).
P4  first compile (dj.register_module with no cached machine code) of the Rust and the Python
    component. (Per-key instantiate + call overhead: `cargo run --release -p datajoint-core
    --example make_overhead`, run by scripts/bench.sh.)
Memory: the backend's RSS after 10 % of the keys and after all of them (no per-key leak).
"""
import os
import platform
import sys
import time
from pathlib import Path

import datajoint as dj
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "client"))
from conftest import connect_datajoint  # noqa: E402  (the client tests' datajoint-python settings)

N = int(os.environ.get("BENCH_KEYS", "100000"))
DJPY_KEYS = int(os.environ.get("BENCH_DJPY_KEYS", "2000"))
PY_KEYS = int(os.environ.get("BENCH_PY_KEYS", "20000"))
SESSIONS = 100  # per subject
SCHEMA = "bench"


def connect():
    return psycopg.connect(autocommit=True)


def rss_kib(conn):
    """The backend's private resident memory (RssAnon): VmRSS also counts the shared buffers the
    backend has touched, which grow with every new page it writes and are not its own."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def component(name):
    return (ROOT / "udfs" / "components" / f"{name}.wasm").read_bytes()


def setup(c):
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    for cls, tier, definition in [
        ("Subject", "manual", "subject_id : int32"),
        ("Session", "manual", "-> Subject\nsession : int16"),
        ("Recording", "imported", "-> Session\n---\nduration : float64\nspike_count : int64"),
        ("SpikeRate", "computed", "-> Recording\n---\nmean_rate : float64"),
        ("SpikeRateSql", "computed", "-> Recording\n---\nmean_rate : float64"),
        ("Quality", "computed", "-> Recording\n---\nrate : float64\nlabel : varchar(16)"),
    ]:
        c.execute("SELECT dj.declare(%s, %s, %s)", (f"{SCHEMA}.{cls}", tier, definition))
    subjects = (N + SESSIONS - 1) // SESSIONS
    c.execute(f"INSERT INTO {SCHEMA}.subject SELECT generate_series(1, %s)", (subjects,))
    c.execute(
        f"INSERT INTO {SCHEMA}.session SELECT s, k FROM generate_series(1, %s) s, generate_series(1, %s) k "
        "WHERE (s - 1) * %s + k <= %s",
        (subjects, SESSIONS, SESSIONS, N),
    )
    c.execute(f"INSERT INTO {SCHEMA}._recording SELECT subject_id, session, 600, subject_id * 7 + session FROM {SCHEMA}.session")
    c.execute(f"VACUUM ANALYZE {SCHEMA}._recording")
    assert c.execute(f"SELECT count(*) FROM {SCHEMA}._recording").fetchone()[0] == N


def first_compile(c, name, wasm):
    """dj.register_module of a module whose machine code is not cached yet: compile + store."""
    c.execute("DELETE FROM dj.makes WHERE module = %s", (name,))
    c.execute("DELETE FROM dj.modules WHERE name = %s", (name,))
    c.execute("DELETE FROM dj.module_artifacts WHERE sha256 = encode(sha256(%s), 'hex')", (wasm,))
    seconds, _ = timed(lambda: c.execute("SELECT dj.register_module(%s, %s)", (name, wasm)))
    return seconds


BUSY_MS = 10
BUSY_KEYS = 400


def pool_cpu_bound(c):
    """P2: the misbehave make computing ~BUSY_MS per key, in this backend and in the pool."""
    c.execute("SELECT dj.register_module('misbehave', %s)", (component("misbehave"),))
    c.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.Case", "case_id : int32\n---\nmode : varchar(16)\nn : int64"))
    c.execute("SELECT dj.declare(%s, 'computed', %s)", (f"{SCHEMA}.Outcome", "-> Case\n---\nvalue : int64"))
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave')")
    c.execute(f"INSERT INTO {SCHEMA}.case SELECT i, 'busy', {BUSY_MS} FROM generate_series(1, {BUSY_KEYS}) i")
    out = []
    for label, args in [("this backend", ""), ("workers => 1", ", workers => 1"), ("workers => 2", ", workers => 2")]:
        c.execute(f"TRUNCATE {SCHEMA}.__outcome")
        seconds, r = timed(lambda: c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome'{args})").fetchone())
        assert r == (BUSY_KEYS, 0, 0), r
        out.append((label, seconds))
    return out


def djpy_populate(keys):
    conn = connect_datajoint()
    lab = dj.VirtualModule("lab", SCHEMA, connection=conn)
    schema = dj.Schema(SCHEMA, connection=conn, context={"Recording": lab.Recording})

    @schema
    class SpikeRatePy(dj.Computed):
        definition = "-> Recording\n---\nmean_rate : float64"

        def make(self, key):
            duration, spikes = (lab.Recording & key).fetch1("duration", "spike_count")
            self.insert1(dict(key, mean_rate=spikes / duration))

    subjects = keys // SESSIONS
    seconds, _ = timed(lambda: SpikeRatePy.populate(f"subject_id <= {subjects}"))
    done = len(SpikeRatePy())
    conn.close()
    return seconds, done


def main():
    c = connect()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    setup(c)
    rust, python = component("spike_rate"), component("quality")
    compile_rust = first_compile(c, "spike_rate", rust)
    compile_python = first_compile(c, "quality", python)
    c.execute(f"SELECT dj.set_make('{SCHEMA}.SpikeRate', 'spike_rate')")
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Quality', 'quality')")

    sql_s, _ = timed(lambda: c.execute(
        f"INSERT INTO {SCHEMA}.__spike_rate_sql (subject_id, session, mean_rate) "
        f"SELECT subject_id, session, spike_count / duration FROM {SCHEMA}._recording"
    ))

    p = connect()  # a fresh backend: its RSS is the populate's alone
    rss_start = rss_kib(p)
    first = N // 10
    t1, r1 = timed(lambda: p.execute(f"SELECT * FROM dj.populate('{SCHEMA}.SpikeRate', max_calls => {first})").fetchone())
    rss_tenth = rss_kib(p)
    t2, r2 = timed(lambda: p.execute(f"SELECT * FROM dj.populate('{SCHEMA}.SpikeRate')").fetchone())
    rss_end = rss_kib(p)
    ours_s = t1 + t2
    assert r1[0] + r2[0] == N and r2[2] == 0, (r1, r2)
    same = c.execute(
        f"SELECT count(*) FROM {SCHEMA}.__spike_rate a JOIN {SCHEMA}.__spike_rate_sql b USING (subject_id, session) "
        "WHERE a.mean_rate = b.mean_rate"
    ).fetchone()[0]
    assert same == N, f"only {same} of {N} rows agree with plain SQL"

    # The pool: the same N keys again with one worker; the difference is the queue's cost per key.
    c.execute(f"TRUNCATE {SCHEMA}.__spike_rate")
    pool_s, r = timed(lambda: p.execute(f"SELECT * FROM dj.populate('{SCHEMA}.SpikeRate', workers => 1)").fetchone())
    assert r == (N, 0, 0), r
    busy = pool_cpu_bound(c)

    sub = min(DJPY_KEYS, N)
    subjects = sub // SESSIONS
    py_first_s, r = timed(lambda: p.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Quality', max_calls => 1)").fetchone())
    assert r[0] == 1, r
    py_subjects = min(PY_KEYS, N) // SESSIONS
    py_wasm_s, r = timed(lambda: p.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Quality', 'subject_id <= {py_subjects}')").fetchone())
    py_wasm_keys = r[0]
    djpy_s, djpy_keys = djpy_populate(sub)
    p.close()

    rate = N / ours_s
    djpy_rate = djpy_keys / djpy_s
    print(f"\n== populate benchmarks, {started}, {platform.node()} ({os.cpu_count()} cores, "
          f"PostgreSQL {c.execute('SHOW server_version').fetchone()[0]}, release build)")
    print(f"P1 trivial make over {N} keys (fetch 1 upstream row, insert 1 row):")
    print(f"  plain SQL INSERT ... SELECT        {sql_s:8.2f} s  {N / sql_s:12.0f} rows/s")
    print(f"  dj.populate, Rust component       {ours_s:8.2f} s  {rate:12.0f} keys/s  ({ours_s / sql_s:.1f}x plain SQL; target <= 3x)")
    print(f"  dj.populate, Python component     {py_wasm_s:8.2f} s  {py_wasm_keys / py_wasm_s:12.0f} keys/s  (on {py_wasm_keys} keys; "
          f"a run's first key {py_first_s * 1e3:.0f} ms)")
    print(f"  datajoint-python 2.3.5 populate   {djpy_s:8.2f} s  {djpy_rate:12.0f} keys/s  (on {djpy_keys} keys; "
          f"{N / djpy_rate:.0f} s for all {N} at that rate)")
    print(f"  speed-up over datajoint-python    {rate / djpy_rate:8.0f}x  (target >= 100x)")
    print(f"  Python component over it          {py_wasm_keys / py_wasm_s / djpy_rate:8.1f}x  (target >= 10x)")
    print(f"P2 worker pool, CPU-bound make (~{BUSY_MS} ms per key) over {BUSY_KEYS} keys:")
    for label, seconds in busy:
        print(f"  {label:<33} {seconds:8.2f} s  {BUSY_KEYS / seconds:12.1f} keys/s")
    one, two = busy[1][1], busy[2][1]
    print(f"  workers => 2 over workers => 1     {one / two:8.2f}x  (target >= 1.8x on 2 cores)")
    print(f"P2 trivial make over {N} keys through the pool (workers => 1):")
    print(f"  pool                              {pool_s:8.2f} s  {N / pool_s:12.0f} keys/s  (this backend: {ours_s:.2f} s)")
    print(f"  queue cost per key                {(pool_s - ours_s) / N * 1e6:8.1f} us  (target < 100 us)")
    print("P4 first compile (register_module, nothing cached):")
    print(f"  Rust component  ({len(rust) / 1e3:.0f} kB)    {compile_rust:8.3f} s")
    print(f"  Python component ({len(python) / 1e6:.1f} MB)  {compile_python:8.3f} s")
    print("Memory (backend private resident memory, RssAnon):")
    print(f"  before {rss_start / 1024:.1f} MiB, after {first} keys {rss_tenth / 1024:.1f} MiB, "
          f"after {N} keys {rss_end / 1024:.1f} MiB (growth over the last {N - first} keys: "
          f"{(rss_end - rss_tenth) / 1024:.1f} MiB)")
    c.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    c.execute("DELETE FROM dj.makes")
    c.close()


if __name__ == "__main__":
    main()
