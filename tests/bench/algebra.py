"""P3 query-algebra benchmark, side by side in one run on one cluster (`make bench`).

A synthetic pipeline (Subject 1 000 → Session 10 000 → Scan 100 000 → Neuron 1 000 000 rows by
default; BENCH_NEURONS sets the last) and a set of queries, each run three ways on the same
server: the SQL our algebra generates (dj.sql), a hand-written SQL equivalent, and the SQL
datajoint-python 2.3.5 generates for the same expression (make_sql). Each query runs wrapped in
count(*), interleaved, median of BENCH_REPEAT (default 5) runs. Also whether our plan has the same
node types as the hand-written one, and how long dj.sql takes to compile a 10-operator
expression (server-side loop, so no client round trip is counted).
"""
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import datajoint as dj
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "client"))
from conftest import connect_datajoint  # noqa: E402

NEURONS = int(os.environ.get("BENCH_NEURONS", "1000000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
S = "bench_algebra"
SUBJECTS = max(NEURONS // 1000, 1)


def setup(c):
    c.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
    c.execute(f"CREATE SCHEMA {S}")
    for cls, tier, definition in [
        ("Subject", "manual", "subject_id : int32\n---\nspecies : varchar(16)\nweight : float64"),
        ("Session", "manual", "-> Subject\nsession_idx : int16\n---\nduration : float64"),
        ("Scan", "manual", "-> Session\nscan_idx : int16\n---\ndepth : float64\nquality : varchar(8)"),
        ("Neuron", "manual", "-> Scan\nneuron : int32\n---\nrate : float64"),
    ]:
        c.execute("SELECT dj.declare(%s, %s, %s)", (f"{S}.{cls}", tier, definition))
    c.execute(f"SELECT setseed(0.5)")
    c.execute(f"INSERT INTO {S}.subject SELECT s, (ARRAY['mouse','rat','fly'])[1 + s % 3], 5 + random() * 35 FROM generate_series(1, {SUBJECTS}) s")
    c.execute(f"INSERT INTO {S}.session SELECT subject_id, i, 1 + random() * 59 FROM {S}.subject, generate_series(0, 9) i")
    c.execute(f"INSERT INTO {S}.scan SELECT subject_id, session_idx, k, 10 + random() * 390, CASE WHEN random() < 0.3 THEN 'bad' ELSE 'good' END FROM {S}.session, generate_series(0, 9) k")
    c.execute(f"INSERT INTO {S}.neuron SELECT subject_id, session_idx, scan_idx, n, random() * 10 FROM {S}.scan, generate_series(0, 9) n")
    c.execute(f"VACUUM ANALYZE {S}.subject, {S}.session, {S}.scan, {S}.neuron")


def t(name):
    return f"{S}.{name}"


def queries(lab):
    """(name, our expression, hand-written SQL, datajoint-python expression)."""
    sub, ses, scan, neu = (f"{S}.{x}" for x in ("subject", "session", "scan", "neuron"))
    return [
        (
            "join + restrict",
            f"({t('Session')} * {t('Scan')}) & 'depth > 300'",
            f"SELECT c.subject_id, c.session_idx, c.scan_idx, c.depth, c.quality, s.duration FROM {ses} s JOIN {scan} c ON s.subject_id = c.subject_id AND s.session_idx = c.session_idx WHERE c.depth > 300",
            (lab.Session * lab.Scan) & "depth > 300",
        ),
        (
            "antijoin",
            f"{t('Scan')} - ({t('Neuron')} & 'rate > 9.9')",
            f"SELECT * FROM {scan} c WHERE NOT EXISTS (SELECT 1 FROM {neu} n WHERE n.subject_id = c.subject_id AND n.session_idx = c.session_idx AND n.scan_idx = c.scan_idx AND n.rate > 9.9)",
            lab.Scan - (lab.Neuron & "rate > 9.9"),
        ),
        (
            "semijoin",
            f"{t('Session')} & ({t('Neuron')} & 'rate > 9.99')",
            f"SELECT * FROM {ses} s WHERE EXISTS (SELECT 1 FROM {neu} n WHERE n.subject_id = s.subject_id AND n.session_idx = s.session_idx AND n.rate > 9.99)",
            lab.Session & (lab.Neuron & "rate > 9.99"),
        ),
        (
            "aggr (keep all)",
            f"aggr({t('Scan')}, {t('Neuron')}, 'n = count(neuron)', 'r = avg(rate)')",
            f"SELECT c.subject_id, c.session_idx, c.scan_idx, count(n.neuron) AS n, avg(n.rate) AS r FROM {scan} c LEFT JOIN {neu} n ON n.subject_id = c.subject_id AND n.session_idx = c.session_idx AND n.scan_idx = c.scan_idx GROUP BY c.subject_id, c.session_idx, c.scan_idx",
            lab.Scan.aggr(lab.Neuron, n="count(neuron)", r="avg(rate)"),
        ),
        (
            "u aggr over join",
            f"aggr(u('quality'), {t('Scan')} * {t('Neuron')}, 'n = count(*)', 'r = max(rate)')",
            f"SELECT c.quality, count(*) AS n, max(n.rate) AS r FROM {scan} c JOIN {neu} n ON n.subject_id = c.subject_id AND n.session_idx = c.session_idx AND n.scan_idx = c.scan_idx GROUP BY c.quality",
            dj.U("quality").aggr(lab.Scan * lab.Neuron, n="count(*)", r="max(rate)"),
        ),
        (
            "proj computed + restrict",
            f"proj({t('Neuron')}, 'r2 = rate * 2') & 'r2 > 19.9'",
            f"SELECT subject_id, session_idx, scan_idx, neuron, rate * 2 AS r2 FROM {neu} WHERE rate * 2 > 19.9",
            lab.Neuron.proj(r2="rate * 2") & "r2 > 19.9",
        ),
        (
            "restrict by key",
            f"({t('Scan')} * {t('Neuron')}) & {{\"subject_id\": 5}}",
            f"SELECT n.*, c.depth, c.quality FROM {scan} c JOIN {neu} n ON n.subject_id = c.subject_id AND n.session_idx = c.session_idx AND n.scan_idx = c.scan_idx WHERE n.subject_id = 5",
            (lab.Scan * lab.Neuron) & {"subject_id": 5},
        ),
        (
            "distinct via u",
            f"u('species', 'session_idx') & ({t('Subject')} * {t('Session')} & 'duration > 50')",
            f"SELECT DISTINCT s.species, e.session_idx FROM {sub} s JOIN {ses} e ON s.subject_id = e.subject_id WHERE e.duration > 50",
            dj.U("species", "session_idx") & (lab.Subject * lab.Session & "duration > 50"),
        ),
        (
            "top",
            f"top({t('Neuron')}, 10, 'rate DESC')",
            f"SELECT * FROM {neu} ORDER BY rate DESC LIMIT 10",
            lab.Neuron & dj.Top(10, "rate DESC"),
        ),
    ]


def run(c, sql):
    t0 = time.perf_counter()
    c.execute(f"SELECT count(*) FROM ({sql}) AS q").fetchone()
    return time.perf_counter() - t0


def node_types(c, sql):
    plan = c.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()[0]
    out = []

    def walk(node):
        out.append(node["Node Type"] + ("/" + node["Join Type"] if "Join Type" in node else ""))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return out


def main():
    c = psycopg.connect(autocommit=True)
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    print(f"== P3 query algebra ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} cores, {c.execute('SHOW server_version').fetchone()[0]})")
    t0 = time.perf_counter()
    setup(c)
    sizes = [c.execute(f"SELECT count(*) FROM {S}.{x}").fetchone()[0] for x in ("subject", "session", "scan", "neuron")]
    print(f"   data: subject {sizes[0]}, session {sizes[1]}, scan {sizes[2]}, neuron {sizes[3]} rows "
          f"({time.perf_counter() - t0:.1f} s to load)")
    djc = connect_datajoint()
    lab = dj.VirtualModule("lab", S, connection=djc)
    rows = []
    worst = 0.0
    for name, ours_text, hand, python in queries(lab):
        ours_sql = c.execute("SELECT dj.sql(dj.rel(%s))", (ours_text,)).fetchone()[0]
        py_sql = python.make_sql()
        counts = {c.execute(f"SELECT count(*) FROM ({q}) AS q").fetchone()[0] for q in (ours_sql, hand, py_sql)}
        assert len(counts) == 1, f"{name}: the three queries disagree: {counts}"
        times = {"ours": [], "hand": [], "python": []}
        for _ in range(REPEAT):
            for key, sql in (("ours", ours_sql), ("hand", hand), ("python", py_sql)):
                times[key].append(run(c, sql))
        med = {k: statistics.median(v) for k, v in times.items()}
        same_plan = node_types(c, ours_sql) == node_types(c, hand)
        ratio = med["ours"] / med["hand"]
        worst = max(worst, ratio)
        rows.append((name, med["hand"], med["ours"], ratio, med["python"], same_plan, counts.pop()))
    print(f"   {'query':26} {'hand SQL':>10} {'dj.sql':>10} {'ratio':>6} {'dj-python':>10}  same plan  rows")
    for name, hand, ours, ratio, py, same, n in rows:
        print(f"   {name:26} {hand * 1000:8.1f}ms {ours * 1000:8.1f}ms {ratio:6.2f} {py * 1000:8.1f}ms  {str(same):9}  {n}")
    print(f"   worst ratio dj.sql / hand SQL: {worst:.2f} (target <= 1.10)")

    # Compile time of a 10-operator expression, in the server (no round trips).
    expression = (
        f"top(aggr(proj((({t('Subject')} * {t('Session')} * {t('Scan')}) & 'depth > 100') - "
        f"({t('Neuron')} & 'rate > 9'), 'd2 = depth * 2'), {t('Neuron')}, 'n = count(*)') & 'n > 1', 5, 'n DESC')"
    )
    operators = sum(expression.count(op) for op in (" * ", " & ", " - ", "proj(", "aggr(", "top("))
    n = 200
    notices = []
    c.add_notice_handler(lambda d: notices.append(d.message_primary))
    c.execute(
        f"""DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
              FOR i IN 1..{n} LOOP PERFORM dj.sql('{expression.replace("'", "''")}'::dj.relation); END LOOP;
              RAISE NOTICE '%', extract(epoch FROM clock_timestamp() - t0) * 1000 / {n};
            END $$"""
    )
    print(f"   dj.sql compile, {operators}-operator expression: {float(notices[-1]):.3f} ms per call (target < 1 ms)")
    c.execute(f"DROP SCHEMA {S} CASCADE")


if __name__ == "__main__":
    main()
