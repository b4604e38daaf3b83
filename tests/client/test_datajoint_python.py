"""datajoint-python 2.3.5, as a foreign client of the same database, must see the tables
dj.declare creates as its own (tiers, definitions, joins, populate, cascade delete), and
dj.tables must see the tables it declares."""

import datajoint as dj
import pytest

from conftest import connect

OURS = "interop_ours"
THEIRS = "interop_theirs"

PIPELINE = [
    ("Subject", "manual", "# Experimental subject\nsubject_id : int32  # unique subject id\n---\nsex : enum('M', 'F', 'U')\ndob = null : date"),
    ("Rig", "lookup", "rig : varchar(16)"),
    ("Session", "manual", "-> Subject\nsession_idx : int16\n---\nsession_start : datetime(3)\n-> [nullable] Rig"),
    ("Pair", "computed", "-> Session\n-> Subject.proj(partner_id='subject_id')\n---\nsimilarity : float32"),
    ("Pair.Channel", "part", "-> master\nchannel : int16\n---\nvalue : <blob>"),
]


@pytest.fixture(scope="module")
def ours():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {OURS} CASCADE")
    for cls, tier, definition in PIPELINE:
        c.execute("SELECT dj.declare(%s, %s, %s)", (f"{OURS}.{cls}", tier, definition))
    c.execute(f"""INSERT INTO {OURS}."#rig" VALUES ('A'), ('B')""")
    yield c
    c.execute(f"DROP SCHEMA IF EXISTS {OURS} CASCADE")
    c.close()


def test_virtual_module_sees_our_tiers_and_definitions(dj_connection, ours):
    lab = dj.VirtualModule("lab", OURS, connection=dj_connection)
    assert isinstance(lab.Subject(), dj.Manual)
    assert isinstance(lab.Rig(), dj.Lookup)
    assert isinstance(lab.Session(), dj.Manual)
    assert isinstance(lab.Pair(), dj.Computed)
    assert isinstance(lab.Pair.Channel(), dj.Part)
    assert lab.Subject.describe() == (
        "# Experimental subject\n"
        "subject_id           : int32                        # unique subject id\n"
        "---\n"
        "sex                  : enum('M', 'F', 'U')          \n"
        "dob=null             : date                         \n"
    )
    assert lab.Session.describe() == (
        "-> lab.Subject\n"
        "session_idx          : int16                        \n"
        "---\n"
        "session_start        : datetime(3)                  \n"
        "-> [nullable] lab.Rig\n"
    )
    assert lab.Pair.describe() == (
        "-> lab.Session\n"
        '-> lab.Subject.proj(partner_id="subject_id")\n'
        "---\n"
        "similarity           : float32                      \n"
    )
    assert lab.Pair.primary_key == ["subject_id", "session_idx", "partner_id"]
    assert lab.Pair.Channel.heading.attributes["value"].codec is not None


def test_python_inserts_joins_populates_and_deletes_on_our_tables(dj_connection, ours):
    lab = dj.VirtualModule("lab", OURS, connection=dj_connection)
    lab.Subject.insert1(dict(subject_id=1, sex="M"))
    lab.Subject.insert1(dict(subject_id=2, sex="F", dob="2020-02-02"))
    lab.Session.insert1(dict(subject_id=1, session_idx=1, session_start="2026-01-01 10:00:00", rig="A"))
    lab.Session.insert1(dict(subject_id=2, session_idx=1, session_start="2026-01-02 10:00:00"))
    # Semantic join on subject_id (same lineage).
    joined = (lab.Session * lab.Subject).to_dicts(order_by="subject_id")
    assert [(r["subject_id"], r["sex"]) for r in joined] == [(1, "M"), (2, "F")]

    schema = dj.Schema(OURS, connection=dj_connection, create_tables=False)

    @schema
    class Pair(dj.Computed):
        definition = lab.Pair.describe()

        class Channel(dj.Part):
            definition = "-> master\nchannel : int16\n---\nvalue : <blob>"

        def make(self, key):
            self.insert1(dict(key, similarity=float(key["subject_id"] == key["partner_id"])))
            self.Channel.insert1(dict(key, channel=0, value=[1, 2, 3]))

    Pair.populate()
    # key_source: 2 sessions x 2 subjects
    rows = ours.execute(f"SELECT subject_id, partner_id, similarity FROM {OURS}.__pair ORDER BY 1, 2").fetchall()
    assert rows == [(1, 1, 1.0), (1, 2, 0.0), (2, 1, 0.0), (2, 2, 1.0)]
    assert ours.execute(f"SELECT count(*) FROM {OURS}.__pair__channel").fetchone()[0] == 4

    # Cascade delete from Python follows our foreign keys, parts with their master.
    (lab.Subject & "subject_id = 1").delete(prompt=False)
    assert ours.execute(f"SELECT count(*) FROM {OURS}.subject").fetchone()[0] == 1
    assert ours.execute(f"SELECT count(*) FROM {OURS}.session").fetchone()[0] == 1
    assert ours.execute(f"SELECT subject_id, partner_id FROM {OURS}.__pair").fetchall() == [(2, 2)]
    assert ours.execute(f"SELECT count(*) FROM {OURS}.__pair__channel").fetchone()[0] == 1


def test_tables_declared_from_python_are_seen_by_dj_tables(dj_connection):
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {THEIRS} CASCADE")
    schema = dj.Schema(THEIRS, connection=dj_connection)

    @schema
    class Animal(dj.Manual):
        definition = "animal : varchar(16)\n---\nspecies = 'mouse' : varchar(32)"

    @schema
    class Tank(dj.Lookup):
        definition = "tank : int16"
        contents = [(1,), (2,)]

    @schema
    class Scan(dj.Imported):
        definition = "-> Animal\n---\n-> Tank"

        class Frame(dj.Part):
            definition = "-> master\nframe : int32"

    @schema
    class Summary(dj.Computed):
        definition = "-> Scan\n---\ntotal : float64"

    listed = c.execute("SELECT class_name, tier, table_name FROM dj.tables(%s) ORDER BY table_name", (THEIRS,)).fetchall()
    assert listed == [
        ("Tank", "lookup", "#tank"),
        ("Summary", "computed", "__summary"),
        ("Scan", "imported", "_scan"),
        ("Scan.Frame", "part", "_scan__frame"),
        ("Animal", "manual", "animal"),
    ]

    # Their definitions read back through the catalog, in the same language.
    described = c.execute("SELECT dj.describe(%s)", (f"{THEIRS}.Scan",)).fetchone()[0]
    assert described == "-> Animal\n---\n-> Tank\n"
    assert [line.rstrip() for line in Scan.describe().splitlines()] == described.splitlines()
    assert c.execute("SELECT dj.describe(%s)", (f"{THEIRS}.Animal",)).fetchone()[0] == (
        "animal               : varchar(16)\n---\nspecies=\"mouse\"      : varchar(32)\n"
    )
    parents = c.execute("SELECT class_name FROM dj.parents(%s)", (f"{THEIRS}.Scan.Frame",)).fetchall()
    assert parents == [("Scan",)]
    mermaid = c.execute("SELECT dj.diagram(ARRAY[%s])", (THEIRS,)).fetchone()[0]
    for node in ['("Animal"):::manual', '("Tank"):::lookup', '(["Scan"]):::imported', '(["Summary"]):::computed', '("Scan.Frame"):::part']:
        assert node in mermaid, mermaid

    # Our declare builds on their tables: a child of a Python-declared parent.
    c.execute("SELECT dj.declare(%s, 'computed', %s)", (f"{THEIRS}.Quality", "-> Scan\n---\nscore : float32"))
    lineage = c.execute(
        f"""SELECT attribute_name, lineage FROM {THEIRS}."~lineage" WHERE table_name = '__quality'"""
    ).fetchall()
    assert lineage == [("animal", f"{THEIRS}.animal.animal")]
    schema.drop(prompt=False)
    c.close()


def test_enforced_tiers_refuse_python_writes_to_computed_tables(dj_connection, ours):
    lab = dj.VirtualModule("lab", OURS, connection=dj_connection)
    lab.Subject.insert1(dict(subject_id=7, sex="U"), skip_duplicates=True)
    lab.Session.insert1(dict(subject_id=7, session_idx=1, session_start="2026-01-03 10:00:00"), skip_duplicates=True)
    assert ours.execute("SELECT dj.enforce_tiers(%s)", (OURS,)).fetchone()[0] == 2
    try:
        # datajoint-python's own check can be switched off by any client; the server's cannot.
        with pytest.raises(dj.errors.DataJointError) as refused:
            lab.Pair.insert1(dict(subject_id=7, session_idx=1, partner_id=7, similarity=1.0), allow_direct_insert=True)
        assert isinstance(refused.value, dj.errors.AccessError), repr(refused.value)
        lab.Subject.insert1(dict(subject_id=8, sex="U"))  # Manual tables stay writable
    finally:
        assert ours.execute("SELECT dj.enforce_tiers(%s, false)", (OURS,)).fetchone()[0] == 2
    lab.Pair.insert1(dict(subject_id=7, session_idx=1, partner_id=7, similarity=1.0), allow_direct_insert=True)
    assert len(lab.Pair & "subject_id = 7") == 1


def test_tables_python_declares_in_an_enforcing_schema_are_guarded(dj_connection, ours):
    ours.execute("SELECT dj.enforce_tiers(%s)", (OURS,))
    try:
        lab = dj.VirtualModule("lab", OURS, connection=dj_connection)
        schema = dj.Schema(OURS, connection=dj_connection, context={"Session": lab.Session})

        @schema
        class Tally(dj.Computed):
            definition = "-> Session\n---\ncount : int32"

            def make(self, key):
                self.insert1(dict(key, count=1))

        guards = ours.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = 'dj_tier_guard'",
            (f"{OURS}.__tally",),
        ).fetchone()[0]
        assert guards == 1
        with pytest.raises(dj.errors.AccessError):
            Tally.insert1(dict(subject_id=2, session_idx=1, count=5), allow_direct_insert=True)
    finally:
        ours.execute("SELECT dj.enforce_tiers(%s, false)", (OURS,))
