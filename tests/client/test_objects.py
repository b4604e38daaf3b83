"""Object references: <blob@store>, <attach@store> and <hash@store> objects written from SQL are
read by datajoint-python 2.3.5 (configured from dj.store_config) and the other way round, byte for
byte (equal contents share one object); writes are tied to transactions and dj.gc never removes
what a row references or a transaction under way holds; stores are used only by the roles they
are granted to."""

import json
import pathlib

import datajoint as dj
import numpy as np
import psycopg
import pytest

from conftest import connect, connect_datajoint

SCHEMA = "objs"
ROLES = ("objs_owner", "objs_other")

DEFINITION = "# recordings\nrec : int32\n---\ntrace : <blob@local>\ndoc = null : <attach@local>\nraw = null : <hash@local>"


@pytest.fixture(scope="module")
def db():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.Recording", DEFINITION))
    yield c
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.close()


@pytest.fixture(scope="module")
def python(db, tmp_path_factory):
    """datajoint-python with the stores block dj.store_config prints."""
    stores = db.execute("SELECT dj.store_config()").fetchone()[0]
    assert stores["default"] == "local"
    assert "secret_key" not in json.dumps(stores)
    conn = connect_datajoint()
    dj.config["stores"] = stores
    dj.config["download_path"] = str(tmp_path_factory.mktemp("downloads"))
    yield dj.VirtualModule("objs", SCHEMA, connection=conn)
    conn.close()


def store_root(db) -> pathlib.Path:
    return pathlib.Path(db.execute("SELECT dj.store_config('local') -> 'local' ->> 'location'").fetchone()[0])


def put(c, attribute, content, filename=None):
    return c.execute("SELECT dj.object_put('objs.Recording', %s, %s, %s)", (attribute, content, filename)).fetchone()[0]


def encode(c, document, dtype=None):
    return c.execute("SELECT dj.blob_encode(%s::jsonb, %s)", (json.dumps(document), dtype)).fetchone()[0]


def test_datajoint_python_reads_what_we_store(db, python):
    trace = put(db, "trace", encode(db, [[1, 2, 3], [4, 5, 6]], "float32"))
    doc = put(db, "doc", b"line one\nline two\n", "notes.txt")
    raw = put(db, "raw", b"\x00\x01raw bytes")
    assert trace["path"] == f"_hash/{SCHEMA}/{trace['hash']}" and trace["store"] == "local" and trace["schema"] == SCHEMA
    db.execute(
        f"INSERT INTO {SCHEMA}.recording VALUES (1, %s, %s, %s)",
        (json.dumps(trace), json.dumps(doc), json.dumps(raw)),
    )
    row = (python.Recording & "rec = 1").fetch1()
    np.testing.assert_array_equal(row["trace"], np.array([[1, 2, 3], [4, 5, 6]], dtype="float32"))
    assert row["trace"].dtype == np.float32
    assert pathlib.Path(row["doc"]).name == "notes.txt"
    assert pathlib.Path(row["doc"]).read_bytes() == b"line one\nline two\n"
    assert row["raw"] == b"\x00\x01raw bytes"


def test_we_read_what_datajoint_python_stores(db, python):
    values = {
        2: np.arange(1000, dtype="float64"),  # compressed
        3: {"a": 1, "b": [1.5, "x"], "c": None},
        4: np.array([[1, 2], [3, 4]], dtype="int16"),
    }
    for rec, value in values.items():
        python.Recording.insert1(dict(rec=rec, trace=value))
    got = dict(
        db.execute(f"SELECT rec, dj.blob_decode(dj.object_read(trace)) FROM {SCHEMA}.recording WHERE rec > 1").fetchall()
    )
    assert got[2] == {"dtype": "float64", "shape": [1000], "data": [float(i) for i in range(1000)]}
    assert got[3] == {"a": 1, "b": [1.5, "x"], "c": None}
    assert got[4] == {"dtype": "int16", "shape": [2, 2], "data": [[1, 2], [3, 4]]}
    assert db.execute(f"SELECT bool_and(dj.object_verify(trace)) FROM {SCHEMA}.recording").fetchone()[0]
    # Equal values encode to equal bytes, so they share datajoint-python's object.
    ours = put(db, "trace", encode(db, list(range(1000)), "float64"))
    theirs = db.execute(f"SELECT trace FROM {SCHEMA}.recording WHERE rec = 2").fetchone()[0]
    assert ours == theirs


def test_a_tampered_object_fails_its_hash_check(db):
    ref = put(db, "raw", b"original content")
    path = store_root(db) / ref["path"]
    path.write_bytes(b"tampered content")
    assert not db.execute("SELECT dj.object_verify(%s)", (json.dumps(ref),)).fetchone()[0]
    with pytest.raises(psycopg.errors.DataCorrupted, match="does not match its hash"):
        db.execute("SELECT dj.object_read(%s)", (json.dumps(ref),))
    assert db.execute("SELECT dj.object_read(%s, 0, 8)", (json.dumps(ref),)).fetchone()[0] == b"tampered"
    path.unlink()
    with pytest.raises(psycopg.errors.UndefinedFile):
        db.execute("SELECT dj.object_read(%s)", (json.dumps(ref),))


def gc(c, dry_run, grace="0"):
    return {k: a for k, _, _, a in c.execute("SELECT * FROM dj.gc('local', %s, %s::interval)", (dry_run, grace)).fetchall()}


def test_rolled_back_and_deleted_objects_go_only_through_gc(db):
    root = store_root(db)
    with connect() as t:
        t.execute("BEGIN")
        lost = put(t, "raw", b"written by a transaction that rolls back")
        t.execute("ROLLBACK")
    kept = put(db, "raw", b"referenced by a committed row")
    db.execute(f"INSERT INTO {SCHEMA}.recording (rec, trace, raw) VALUES (10, %s, %s)", (json.dumps(put(db, "trace", encode(db, 1))), json.dumps(kept)))
    assert (root / lost["path"]).exists(), "nothing is deleted before gc"
    assert gc(db, True, "1 hour").get(lost["path"]) == "kept: younger than the grace window"
    assert gc(db, True)[lost["path"]] == "would quarantine"
    assert (root / lost["path"]).exists()
    plan = gc(db, False)
    assert plan[lost["path"]] == "quarantined"
    assert kept["path"] not in plan and not (root / lost["path"]).exists()
    trash = [k for k, a in gc(db, False).items() if a == "deleted"]
    assert any(k.endswith(lost["path"]) for k in trash)
    assert not list((root / "_dj_trash").rglob(lost["hash"]))
    # A deleted row's object stays while the delete is uncommitted, goes after.
    with connect() as t:
        t.execute("BEGIN")
        t.execute(f"DELETE FROM {SCHEMA}.recording WHERE rec = 10")
        assert kept["path"] not in gc(db, False)
        t.execute("COMMIT")
    assert gc(db, False)[kept["path"]] == "quarantined"
    assert gc(db, False)  # deletes it
    assert not list(root.rglob(kept["hash"]))


def test_gc_never_takes_an_object_a_transaction_holds(db):
    root = store_root(db)
    content = b"found by an open transaction"
    with connect() as first:
        first.execute("BEGIN")
        ref = put(first, "raw", content)
        first.execute("ROLLBACK")
    # The object is now unreferenced garbage; a second transaction finds it (no new upload).
    with connect() as t:
        t.execute("BEGIN")
        assert put(t, "raw", content) == ref
        assert gc(db, False)[ref["path"]] == "kept: in use by a transaction"
        assert (root / ref["path"]).exists()
        t.execute(f"INSERT INTO {SCHEMA}.recording (rec, trace, raw) VALUES (20, %s, %s)", (json.dumps(put(t, "trace", encode(t, 2))), json.dumps(ref)))
        t.execute("COMMIT")
    assert ref["path"] not in gc(db, False)
    assert db.execute("SELECT dj.object_read(%s)", (json.dumps(ref),)).fetchone()[0] == content


def test_a_quarantined_object_referenced_again_is_restored(db):
    content = b"referenced again while quarantined"
    with connect() as t:
        t.execute("BEGIN")
        ref = put(t, "raw", content)
        t.execute("ROLLBACK")
    assert gc(db, False)[ref["path"]] == "quarantined"
    # A client that found the object before it was quarantined commits its row now.
    db.execute(f"INSERT INTO {SCHEMA}.recording (rec, trace, raw) VALUES (30, %s, %s)", (json.dumps(put(db, "trace", encode(db, 3))), json.dumps(ref)))
    restored = [k for k, a in gc(db, False).items() if a == "restored"]
    assert len(restored) == 1 and restored[0].endswith(ref["path"])
    assert db.execute("SELECT dj.object_read(%s)", (json.dumps(ref),)).fetchone()[0] == content


@pytest.fixture
def roles(db):
    for r in ROLES:
        if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone():
            db.execute(f"DROP OWNED BY {r}")
        db.execute(f"DROP ROLE IF EXISTS {r}")
        db.execute(f"CREATE ROLE {r} LOGIN")
    db.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {ROLES[0]}, {ROLES[1]}")
    db.execute(f"GRANT SELECT, INSERT ON {SCHEMA}.recording TO {ROLES[0]}, {ROLES[1]}")
    db.execute("GRANT pg_write_server_files TO objs_owner")
    yield
    db.execute("SELECT dj.drop_store(name) FROM dj._stores WHERE name = 'lab_a'")
    for r in ROLES:
        db.execute(f"DROP OWNED BY {r}")
        db.execute(f"DROP ROLE {r}")


def test_stores_are_used_only_by_the_roles_they_are_granted_to(db, roles):
    owner, other = connect(user="objs_owner"), connect(user="objs_other")
    # A relative location is under the data directory.
    spec = {"protocol": "file", "location": "lab_a_store", "subfolding": [2, 2]}
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="add stores"):
        other.execute("SELECT dj.add_store('lab_a', %s)", (json.dumps(spec),))
    shown = owner.execute("SELECT dj.add_store('lab_a', %s)", (json.dumps(spec),)).fetchone()[0]
    assert shown["hash_prefix"] == "_hash" and shown["subfolding"] == [2, 2]
    with pytest.raises(psycopg.errors.DuplicateObject):
        owner.execute("SELECT dj.add_store('lab_a', %s)", (json.dumps(spec),))
    db.execute(f"SELECT dj.declare('{SCHEMA}.Private', 'manual', 'k : int32\n---\nv : <blob@lab_a>')")
    db.execute(f"GRANT INSERT ON {SCHEMA}.private TO objs_owner, objs_other")
    blob = encode(db, "secret")
    ref = owner.execute("SELECT dj.object_put('objs.Private', 'v', %s)", (blob,)).fetchone()[0]
    assert ref["path"].startswith(f"_hash/{SCHEMA}/{ref['hash'][:2]}/{ref['hash'][2:4]}/")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="store lab_a"):
        other.execute("SELECT dj.object_put('objs.Private', 'v', %s)", (blob,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="store lab_a"):
        other.execute("SELECT dj.object_read(%s)", (json.dumps(ref),))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        other.execute("SELECT * FROM dj._stores")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="collect"):
        other.execute("SELECT * FROM dj.gc('lab_a')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="grant"):
        other.execute("SELECT dj.grant_store('lab_a', 'objs_other')")
    owner.execute("SELECT dj.grant_store('lab_a', 'objs_other')")
    assert other.execute("SELECT dj.object_read(%s)", (json.dumps(ref),)).fetchone()[0] == blob
    assert db.execute("SELECT users FROM dj.stores WHERE name = 'lab_a'").fetchone()[0] == ["objs_other"]
    owner.execute("SELECT dj.revoke_store('lab_a', 'objs_other')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        other.execute("SELECT dj.object_read(%s)", (json.dumps(ref),))
    # A store in use cannot be dropped; its config for clients names no secret.
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="private"):
        owner.execute("SELECT dj.drop_store('lab_a')")
    location = owner.execute("SELECT dj.store_config('lab_a')").fetchone()[0]["lab_a"]["location"]
    # Relative locations get a folder per database.
    assert location == str(store_root(db).parent.parent / "lab_a_store" / db.info.dbname)
    db.execute(f"DROP TABLE {SCHEMA}.private")


def test_s3_secrets_are_readable_by_no_other_role(db, roles):
    owner, other = connect(user="objs_owner"), connect(user="objs_other")
    spec = {"protocol": "s3", "endpoint": "127.0.0.1:1", "bucket": "b", "location": "x", "access_key": "AKEY", "secret_key": "SKEY"}
    # This build opens no S3 store yet: refused with what to do, nothing written.
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        owner.execute("SELECT dj.add_store('lab_s3', %s)", (json.dumps(spec),))
    for c in (owner, other):
        assert "SKEY" not in json.dumps(c.execute("SELECT json_agg(s) FROM dj.stores s").fetchone()[0])


def test_keys_never_leave_the_store(db):
    bad_refs = [
        {"path": "../../../etc/passwd", "store": "local"},
        {"path": "/etc/passwd", "store": "local"},
        {"path": "_hash/objs/..", "store": "local"},
        {"path": "a\\..\\b", "store": "local"},
        {"path": "a\u0001b", "store": "local"},
    ]
    for ref in bad_refs:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a valid object key"):
            db.execute("SELECT dj.object_read(%s::jsonb)", (json.dumps(ref),))
    for name in ("../x", "a/b", "..", "x\ny"):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            put(db, "doc", b"x", name)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT dj.add_store('bad', %s)", (json.dumps({"protocol": "file", "location": "/tmp/x", "hash_prefix": "../.."}),))
    with pytest.raises(psycopg.errors.InvalidBinaryRepresentation, match="invalid DataJoint blob"):
        put(db, "trace", b"not a blob")
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        put(db, "doc", b"x")
    with pytest.raises(psycopg.errors.WrongObjectType):
        put(db, "rec", b"x")
