"""The query algebra, cross-checked against datajoint-python 2.3.5 on the same cluster: one
dataset (declared by datajoint-python, so lineage is theirs), each query written once in Python's
algebra and once in ours (the textual form of dj.relation, and the SQL operators), the same rows,
the same primary key, and errors where Python errors."""

import decimal
import random

import datajoint as dj
import psycopg
import pytest

from conftest import connect

S = "algebra_xcheck"


@pytest.fixture(scope="module")
def lab(dj_connection):
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
    schema = dj.Schema(S, connection=dj_connection)

    @schema
    class Rig(dj.Lookup):
        definition = "rig : varchar(8)\n---\nroom : int32"
        contents = [("A", 1), ("B", 2), ("C", 2)]

    @schema
    class Subject(dj.Manual):
        definition = "subject_id : int32\n---\nspecies : varchar(16)\nweight : float64"

    @schema
    class Session(dj.Manual):
        definition = "-> Subject\nsession_idx : int16\n---\nduration : float64\n-> Rig"

    @schema
    class Scan(dj.Manual):
        definition = "-> Session\nscan_idx : int16\n---\ndepth : float64\nquality : varchar(8)"

    @schema
    class Neuron(dj.Manual):
        definition = "-> Scan\nneuron : int32\n---\nrate : float64"

    @schema
    class Pair(dj.Manual):
        definition = "-> Subject\n-> Subject.proj(partner='subject_id')\n---\nsimilarity : float64"

    rng = random.Random(5)
    species = ["mouse", "rat", "fly"]
    subjects, sessions, scans, neurons, pairs = [], [], [], [], []
    for s in range(1, 21):
        subjects.append(dict(subject_id=s, species=species[s % 3], weight=round(rng.uniform(5, 40), 2)))
        for i in range(rng.randint(0, 4)):
            sessions.append(dict(subject_id=s, session_idx=i, duration=round(rng.uniform(1, 60), 1), rig="ABC"[rng.randint(0, 2)]))
            for k in range(rng.randint(0, 3)):
                scans.append(dict(subject_id=s, session_idx=i, scan_idx=k, depth=round(rng.uniform(10, 400), 1), quality=rng.choice(["good", "bad"])))
                for n in range(rng.randint(0, 5)):
                    neurons.append(dict(subject_id=s, session_idx=i, scan_idx=k, neuron=n, rate=round(rng.uniform(0, 10), 3)))
    for s in range(1, 21, 3):
        pairs.append(dict(subject_id=s, partner=(s % 20) + 1, similarity=round(rng.random(), 3)))
    Subject.insert(subjects)
    Session.insert(sessions)
    Scan.insert(scans)
    Neuron.insert(neurons)
    Pair.insert(pairs)
    yield dict(Rig=Rig, Subject=Subject, Session=Session, Scan=Scan, Neuron=Neuron, Pair=Pair, conn=c)
    c.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
    c.close()


def t(name):
    return f"{S}.{name}"


# (id, datajoint-python expression, our textual expression)
QUERIES = [
    ("table", lambda L: L["Subject"], f"{t('Subject')}"),
    ("restrict-sql", lambda L: L["Subject"] & "weight > 20", f"{t('Subject')} & 'weight > 20'"),
    ("restrict-key", lambda L: L["Subject"] & {"subject_id": 3}, f'{t("Subject")} & {{"subject_id": 3}}'),
    ("restrict-keys", lambda L: L["Subject"] & [{"subject_id": 1}, {"subject_id": 2}], f'{t("Subject")} & [{{"subject_id": 1}}, {{"subject_id": 2}}]'),
    ("restrict-or-mixed", lambda L: L["Subject"] & ["weight < 10", {"species": "rat"}], f"{t('Subject')} & ['weight < 10', {{\"species\": \"rat\"}}]"),
    ("restrict-not", lambda L: L["Subject"] & dj.Not("weight > 20"), f"{t('Subject')} & not('weight > 20')"),
    ("restrict-and", lambda L: L["Subject"] & dj.AndList(["weight > 10", "weight < 30"]), f"{t('Subject')} & and('weight > 10', 'weight < 30')"),
    ("restrict-or-then-and", lambda L: (L["Subject"] & ["weight < 10", "weight > 35"]) & "species = 'mouse'", f"({t('Subject')} & ['weight < 10', 'weight > 35']) & 'species = ''mouse'''"),
    ("antirestrict-list", lambda L: L["Subject"] - ["weight < 10", "weight > 35"], f"{t('Subject')} - ['weight < 10', 'weight > 35']"),
    ("antirestrict-sql", lambda L: L["Subject"] - "species = 'mouse'", f"{t('Subject')} - 'species = ''mouse'''"),
    ("semijoin", lambda L: L["Subject"] & L["Session"], f"{t('Subject')} & {t('Session')}"),
    ("antijoin", lambda L: L["Subject"] - L["Session"], f"{t('Subject')} - {t('Session')}"),
    ("semijoin-restricted", lambda L: L["Subject"] & (L["Session"] & "duration > 30"), f"{t('Subject')} & ({t('Session')} & 'duration > 30')"),
    ("antijoin-restricted", lambda L: L["Scan"] - (L["Neuron"] & "rate > 5"), f"{t('Scan')} - ({t('Neuron')} & 'rate > 5')"),
    ("join", lambda L: L["Session"] * L["Subject"], f"{t('Session')} * {t('Subject')}"),
    ("join-dependent", lambda L: L["Session"] * L["Scan"], f"{t('Session')} * {t('Scan')}"),
    ("join-restricted", lambda L: (L["Session"] * L["Scan"]) & "depth > 100", f"({t('Session')} * {t('Scan')}) & 'depth > 100'"),
    ("join-secondary-fk", lambda L: L["Session"] * L["Rig"] & "room = 2", f"({t('Session')} * {t('Rig')}) & 'room = 2'"),
    ("join-three", lambda L: L["Subject"] * L["Session"] * L["Scan"] & "weight > 15", f"({t('Subject')} * {t('Session')} * {t('Scan')}) & 'weight > 15'"),
    ("join-cross", lambda L: L["Subject"].proj() * L["Rig"].proj(), f"proj({t('Subject')}) * proj({t('Rig')})"),
    ("proj-key", lambda L: L["Subject"].proj(), f"proj({t('Subject')})"),
    ("proj-attr", lambda L: L["Subject"].proj("species"), f"proj({t('Subject')}, 'species')"),
    ("proj-computed", lambda L: L["Subject"].proj(w2="weight * 2"), f"proj({t('Subject')}, 'w2 = weight * 2')"),
    ("proj-rename-key", lambda L: L["Session"].proj(sid="subject_id"), f"proj({t('Session')}, 'sid = subject_id')"),
    ("proj-exclude", lambda L: L["Session"].proj(..., "-duration"), f"proj({t('Session')}, '...', '-duration')"),
    ("proj-restrict-computed", lambda L: L["Subject"].proj(w2="weight * 2") & "w2 > 50", f"proj({t('Subject')}, 'w2 = weight * 2') & 'w2 > 50'"),
    ("proj-join-compare", lambda L: (L["Session"] * L["Scan"]).proj("depth", "duration") & "depth > duration * 5", f"proj({t('Session')} * {t('Scan')}, 'depth', 'duration') & 'depth > duration * 5'"),
    ("aggr-count", lambda L: L["Subject"].aggr(L["Session"], n="count(session_idx)"), f"aggr({t('Subject')}, {t('Session')}, 'n = count(session_idx)')"),
    ("aggr-matching", lambda L: L["Subject"].aggr(L["Session"], n="count(*)", exclude_nonmatching=True), f"aggr({t('Subject')}, {t('Session')}, 'n = count(*)', exclude_nonmatching=true)"),
    ("aggr-avg", lambda L: L["Session"].aggr(L["Scan"], avg_depth="avg(depth)", n="count(scan_idx)"), f"aggr({t('Session')}, {t('Scan')}, 'avg_depth = avg(depth)', 'n = count(scan_idx)')"),
    ("aggr-over-join", lambda L: L["Subject"].aggr(L["Session"] * L["Scan"], total="count(scan_idx)"), f"aggr({t('Subject')}, {t('Session')} * {t('Scan')}, 'total = count(scan_idx)')"),
    ("aggr-ellipsis", lambda L: L["Subject"].aggr(L["Session"], ..., n="count(session_idx)"), f"aggr({t('Subject')}, {t('Session')}, '...', 'n = count(session_idx)')"),
    ("aggr-restricted", lambda L: L["Subject"].aggr(L["Session"], n="count(session_idx)") & "n > 2", f"aggr({t('Subject')}, {t('Session')}, 'n = count(session_idx)') & 'n > 2'"),
    ("aggr-max", lambda L: L["Scan"].aggr(L["Neuron"], top_rate="max(rate)", exclude_nonmatching=True), f"aggr({t('Scan')}, {t('Neuron')}, 'top_rate = max(rate)', exclude_nonmatching=true)"),
    ("u-restrict", lambda L: dj.U("species") & L["Subject"], f"u('species') & {t('Subject')}"),
    ("u-restrict-two", lambda L: dj.U("subject_id", "rig") & L["Session"], f"u('subject_id', 'rig') & {t('Session')}"),
    ("u-aggr", lambda L: dj.U("species").aggr(L["Subject"], n="count(*)", w="avg(weight)"), f"aggr(u('species'), {t('Subject')}, 'n = count(*)', 'w = avg(weight)')"),
    ("u-aggr-total", lambda L: dj.U().aggr(L["Scan"], n="count(*)"), f"aggr(u(), {t('Scan')}, 'n = count(*)')"),
    ("u-aggr-join", lambda L: dj.U("rig").aggr(L["Session"] * L["Scan"], n="count(*)", d="max(depth)"), f"aggr(u('rig'), {t('Session')} * {t('Scan')}, 'n = count(*)', 'd = max(depth)')"),
    ("union-keys", lambda L: (L["Subject"] & "weight > 30").proj() + (L["Subject"] & "weight < 15").proj(), f"proj({t('Subject')} & 'weight > 30') + proj({t('Subject')} & 'weight < 15')"),
    ("union-secondaries", lambda L: (L["Subject"] & "subject_id < 8").proj("species") + (L["Subject"] & "subject_id > 4").proj("weight"), f"proj({t('Subject')} & 'subject_id < 8', 'species') + proj({t('Subject')} & 'subject_id > 4', 'weight')"),
    ("renamed-fk-join", lambda L: L["Pair"] * L["Subject"], f"{t('Pair')} * {t('Subject')}"),
    ("renamed-fk-partner", lambda L: L["Pair"] * L["Subject"].proj(partner="subject_id", partner_species="species"), f"{t('Pair')} * proj({t('Subject')}, 'partner = subject_id', 'partner_species = species')"),
    ("renamed-fk-antijoin", lambda L: L["Subject"] - L["Pair"], f"{t('Subject')} - {t('Pair')}"),
    ("between", lambda L: L["Neuron"] & "rate between 1 and 3", f"{t('Neuron')} & 'rate between 1 and 3'"),
    ("extend", lambda L: L["Session"].extend(L["Rig"]), f"extend({t('Session')}, {t('Rig')})"),
    ("top", lambda L: L["Scan"] & dj.Top(5, ["depth DESC", "subject_id", "session_idx", "scan_idx"]), f"top({t('Scan')}, 5, 'depth DESC', 'subject_id', 'session_idx', 'scan_idx')"),
    ("nested", lambda L: (L["Subject"] - (L["Session"] & "duration < 10")).aggr(L["Session"] * L["Scan"] & "quality = 'good'", n="count(scan_idx)"), f"aggr({t('Subject')} - ({t('Session')} & 'duration < 10'), ({t('Session')} * {t('Scan')}) & 'quality = ''good''', 'n = count(scan_idx)')"),
]

# Expressions both algebras refuse.
ERRORS = [
    ("lineage-clash", lambda L: L["Subject"] * L["Rig"].proj(subject_id="room"), f"{t('Subject')} * proj({t('Rig')}, 'subject_id = room')"),
    ("secondary-namesakes", lambda L: L["Subject"] * L["Subject"].proj(other="subject_id", w="weight", weight="weight"), f"{t('Subject')} * proj({t('Subject')}, 'other = subject_id', 'weight')"),
    ("union-keys-differ", lambda L: L["Subject"].proj() + L["Session"].proj(), f"proj({t('Subject')}) + proj({t('Session')})"),
    ("union-shared-secondary", lambda L: L["Subject"] + L["Subject"], f"{t('Subject')} + {t('Subject')}"),
    ("u-join", lambda L: dj.U("species") * L["Subject"], f"u('species') * {t('Subject')}"),
    ("u-antijoin", lambda L: dj.U("species") - L["Subject"], f"u('species') - {t('Subject')}"),
    ("exclude-key", lambda L: L["Subject"].proj("-subject_id"), f"proj({t('Subject')}, '-subject_id')"),
    ("unknown-attribute", lambda L: L["Subject"].proj("nope"), f"proj({t('Subject')}, 'nope')"),
    ("extend-undetermined", lambda L: L["Subject"].extend(L["Session"]), f"extend({t('Subject')}, {t('Session')})"),
]


def normalize(row):
    out = {}
    for k, v in row.items():
        if isinstance(v, (float, decimal.Decimal)) or type(v).__name__.startswith("float"):
            v = round(float(v), 6)
        elif type(v).__name__.startswith("int"):
            v = int(v)
        out[k] = v
    return tuple(sorted(out.items()))


def ours(conn, text):
    rows = conn.execute("SELECT dj.fetch(dj.rel(%s))", (text,)).fetchall()
    key = conn.execute("SELECT dj.primary_key(dj.rel(%s))", (text,)).fetchone()[0]
    return sorted((normalize(r[0]) for r in rows), key=repr), key


@pytest.mark.parametrize("name,python,text", QUERIES, ids=[q[0] for q in QUERIES])
def test_same_rows_as_datajoint_python(lab, name, python, text):
    expr = python(lab)
    expected = sorted((normalize(r) for r in expr.to_dicts()), key=repr)
    rows, key = ours(lab["conn"], text)
    assert rows == expected
    assert set(key) == set(expr.primary_key)
    # The text form round-trips: what we print parses back to the same relation.
    printed = lab["conn"].execute("SELECT dj.rel(%s)::text", (text,)).fetchone()[0]
    assert ours(lab["conn"], printed) == (rows, key)


def test_the_suite_is_large_and_not_trivial(lab):
    assert len(QUERIES) >= 30
    counts = [len(ours(lab["conn"], text)[0]) for _, _, text in QUERIES]
    # Most queries return rows, and not all the same number of them.
    assert sum(1 for c in counts if c > 0) >= len(QUERIES) - 1
    assert len(set(counts)) > 10


@pytest.mark.parametrize("name,python,text", ERRORS, ids=[q[0] for q in ERRORS])
def test_same_errors_as_datajoint_python(lab, name, python, text):
    with pytest.raises(dj.DataJointError):
        python(lab).to_dicts()
    with pytest.raises(psycopg.Error) as caught:
        lab["conn"].execute("SELECT dj.rel(%s)", (text,))
    diag = caught.value.diag
    assert diag.sqlstate is not None and diag.sqlstate[:2] in ("42", "0A")
    assert diag.message_hint


def test_sql_operators_build_the_same_relations(lab):
    c = lab["conn"]
    Subject, Session, Scan = (f"dj.rel('{t(n)}')" for n in ("Subject", "Session", "Scan"))
    built = c.execute(
        f"""SELECT ({Subject} * {Session} & 'duration > 30')::text,
                   ({Subject} - {Session})::text,
                   ({Subject} & {Session})::text,
                   ({Subject} & '{{"subject_id": 3}}'::jsonb)::text,
                   ({Subject} & ARRAY['weight < 10', 'weight > 35'])::text,
                   ({Subject} & dj.not({Session}))::text,
                   dj.aggr({Subject}, {Session} * {Scan}, 'n = count(scan_idx)')::text,
                   (dj.proj({Subject} & 'weight > 30') + dj.proj({Subject} & 'weight < 15'))::text,
                   dj.top({Scan}, 3, 'depth DESC')::text,
                   (dj.u('species') & {Subject})::text"""
    ).fetchone()
    assert built == (
        f"({t('Subject')} * {t('Session')}) & 'duration > 30'",
        f"{t('Subject')} - {t('Session')}",
        f"{t('Subject')} & {t('Session')}",
        f'{t("Subject")} & {{"subject_id":3}}',
        f"{t('Subject')} & ['weight < 10', 'weight > 35']",
        f"{t('Subject')} & not({t('Session')})",
        f"aggr({t('Subject')}, {t('Session')} * {t('Scan')}, 'n = count(scan_idx)')",
        f"proj({t('Subject')} & 'weight > 30') + proj({t('Subject')} & 'weight < 15')",
        f"top({t('Scan')}, 3, 'depth DESC')",
        f"u('species') & {t('Subject')}",
    )
    # Python agrees on the counts of the same expressions.
    L = lab
    assert c.execute(f"SELECT dj.count({Subject} & dj.not({Session}))").fetchone()[0] == len(L["Subject"] - L["Session"])
    assert c.execute(f"SELECT dj.count({Subject} & ARRAY['weight < 10', 'weight > 35'])").fetchone()[0] == len(
        L["Subject"] & ["weight < 10", "weight > 35"]
    )


def test_views_for_bi_tools(lab):
    c = lab["conn"]
    view = c.execute(
        "SELECT dj.create_view(%s, dj.aggr(dj.rel(%s), dj.rel(%s), 'n = count(session_idx)', 'mean_duration = avg(duration)'))",
        (f"{S}.session_counts", t("Subject"), t("Session")),
    ).fetchone()[0]
    assert view == f'"{S}"."session_counts"'
    # A typed view, listed by information_schema like any table, with its key in the comment.
    columns = c.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = 'session_counts' ORDER BY ordinal_position",
        (S,),
    ).fetchall()
    assert columns == [("subject_id", "integer"), ("n", "bigint"), ("mean_duration", "double precision")]
    comment = c.execute(f"SELECT obj_description('{S}.session_counts'::regclass)").fetchone()[0]
    assert comment.endswith("primary key: (subject_id)")
    expected = {(r["subject_id"], int(r["n"])) for r in lab["Subject"].aggr(lab["Session"], n="count(session_idx)").to_dicts()}
    assert set(c.execute(f"SELECT subject_id, n FROM {S}.session_counts").fetchall()) == expected
