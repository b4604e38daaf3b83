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
    shown = owner.execute("SELECT dj.add_store('lab_a', %s)", (json.dumps(spec),)).fetchone()[0]
    assert "SKEY" not in json.dumps(shown) and "AKEY" not in json.dumps(shown)
    assert owner.execute("SELECT has_secrets FROM dj.stores WHERE name = 'lab_a'").fetchone()[0]
    for c in (owner, other):
        assert "SKEY" not in json.dumps(c.execute("SELECT json_agg(s) FROM dj.stores s").fetchone()[0])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT secrets FROM dj._stores")
    config = owner.execute("SELECT dj.store_config('lab_a')").fetchone()[0]["lab_a"]
    assert config == {"protocol": "s3", "endpoint": "127.0.0.1:1", "bucket": "b", "location": "x", "secure": True,
                      "token_length": 8, "hash_prefix": "_hash", "schema_prefix": "_schema"}


@pytest.fixture
def s3_store(db, seaweed):
    spec = {"protocol": "s3", "endpoint": seaweed["endpoint"], "bucket": seaweed["bucket"], "location": "lab",
            "secure": False, "access_key": seaweed["access_key"], "secret_key": seaweed["secret_key"]}
    db.execute("SELECT dj.add_store('lab_s3', %s, replace => true)", (json.dumps(spec),))
    db.execute("SELECT dj.grant_store('lab_s3', 'public')")
    db.execute(f"DROP TABLE IF EXISTS {SCHEMA}.remote")
    db.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.Remote", "k : int32\n---\nv : <blob@lab_s3>\nf = null : <attach@lab_s3>"))
    yield seaweed
    db.execute(f"DROP TABLE IF EXISTS {SCHEMA}.remote")
    db.execute("SELECT dj.drop_store('lab_s3')")


def test_s3_store_both_directions_with_datajoint_python(db, python, s3_store):
    ref = db.execute("SELECT dj.object_put('objs.Remote', 'v', dj.blob_encode('[[1, 2], [3, 4]]', 'uint8'))").fetchone()[0]
    doc = db.execute("SELECT dj.object_put('objs.Remote', 'f', 'remote text', 'r.txt')").fetchone()[0]
    assert ref["store"] == "lab_s3" and ref["path"].startswith(f"_hash/{SCHEMA}/")
    db.execute(f"INSERT INTO {SCHEMA}.remote VALUES (1, %s, %s)", (json.dumps(ref), json.dumps(doc)))
    stores = db.execute("SELECT dj.store_config()").fetchone()[0]
    stores["lab_s3"].update(access_key=s3_store["access_key"], secret_key=s3_store["secret_key"])
    dj.config["stores"] = stores
    remote = dj.VirtualModule("objs_remote", SCHEMA, connection=dj.conn())
    row = (remote.Remote & "k = 1").fetch1()
    np.testing.assert_array_equal(row["v"], np.array([[1, 2], [3, 4]], dtype="uint8"))
    assert pathlib.Path(row["f"]).read_bytes() == b"remote text"
    remote.Remote.insert1(dict(k=2, v={"from": "python", "values": [1, 2, 3]}))
    got = db.execute(f"SELECT dj.blob_decode(dj.object_read(v)), dj.object_verify(v), dj.object_info(v) ->> 'exists' FROM {SCHEMA}.remote WHERE k = 2").fetchone()
    assert got == ({"from": "python", "values": [1, 2, 3]}, True, "true")
    assert db.execute(f"SELECT dj.object_read(v, 0, 4) FROM {SCHEMA}.remote WHERE k = 1").fetchone()[0] == b"mYm\0"
    # A presigned URL downloads the object without credentials; file stores have none.
    url = db.execute(f"SELECT dj.object_url(v, '5 minutes') FROM {SCHEMA}.remote WHERE k = 1").fetchone()[0]
    import urllib.request
    assert urllib.request.urlopen(url, timeout=10).read() == db.execute(f"SELECT dj.object_read(v) FROM {SCHEMA}.remote WHERE k = 1").fetchone()[0]
    assert db.execute(f"SELECT dj.object_url(trace) FROM {SCHEMA}.recording LIMIT 1").fetchone()[0] is None
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute(f"SELECT dj.object_url(v, '8 days') FROM {SCHEMA}.remote WHERE k = 1")


def test_s3_gc_quarantines_and_deletes(db, s3_store):
    with connect() as t:
        t.execute("BEGIN")
        lost = t.execute("SELECT dj.object_put('objs.Remote', 'v', dj.blob_encode('\"rolled back on s3\"'))").fetchone()[0]
        t.execute("ROLLBACK")
    plan = {k: a for k, _, _, a in db.execute("SELECT * FROM dj.gc('lab_s3', false, '0')").fetchall()}
    assert plan[lost["path"]] == "quarantined"
    with pytest.raises(psycopg.errors.UndefinedFile):
        db.execute("SELECT dj.object_read(%s)", (json.dumps(lost),))
    plan = {k: a for k, _, _, a in db.execute("SELECT * FROM dj.gc('lab_s3', false, '0')").fetchall()}
    assert [a for k, a in plan.items() if k.endswith(lost["path"])] == ["deleted"]


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


def test_a_killed_writer_leaves_only_collectable_garbage(db, admin):
    root = store_root(db)
    victim = connect()
    victim.execute("BEGIN")
    ref = put(victim, "raw", b"uploaded by a backend killed before its commit")
    pid = victim.info.backend_pid
    assert gc(db, False)[ref["path"]] == "kept: in use by a transaction"
    admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    assert (root / ref["path"]).exists()
    assert db.execute(f"SELECT count(*) FROM {SCHEMA}.recording WHERE raw ->> 'path' = %s", (ref["path"],)).fetchone()[0] == 0
    assert gc(db, False)[ref["path"]] == "quarantined"
    assert any(k.endswith(ref["path"]) and a == "deleted" for k, a in gc(db, False).items())


def test_gc_running_against_concurrent_inserts_never_loses_a_referenced_object(db):
    import random
    import threading

    stop = threading.Event()
    errors = []

    def writer(n0):
        c = psycopg.connect(dbname=db.info.dbname)
        rng = random.Random(n0)
        try:
            for i in range(60):
                # Few distinct contents: writers keep finding objects others wrote, rolled back or gc quarantined.
                content = f"shared content {rng.randrange(6)}".encode()
                ref = put(c, "raw", content)
                if rng.random() < 0.3:
                    c.rollback()
                    continue
                c.execute(f"INSERT INTO {SCHEMA}.recording (rec, trace, raw) VALUES (%s, %s, %s)",
                          (n0 + i, json.dumps(put(c, "trace", encode(c, n0 + i))), json.dumps(ref)))
                c.commit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    def collector():
        c = connect()
        while not stop.is_set():
            c.execute("SELECT count(*) FROM dj.gc('local', false, '0')")
        c.close()

    writers = [threading.Thread(target=writer, args=(n,)) for n in (1000, 2000)]
    gcs = threading.Thread(target=collector)
    gcs.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    gcs.join()
    assert not errors, errors
    rows = db.execute(f"SELECT count(*), count(*) FILTER (WHERE dj.object_verify(raw) AND dj.object_verify(trace)) FROM {SCHEMA}.recording WHERE rec >= 1000").fetchone()
    assert rows[0] > 40 and rows[0] == rows[1], rows
    # Two runs later nothing unreferenced is left under the schema's objects.
    gc(db, False)
    gc(db, False)
    root = store_root(db)
    referenced = {p for (p,) in db.execute(f"SELECT raw ->> 'path' FROM {SCHEMA}.recording WHERE raw IS NOT NULL UNION SELECT trace ->> 'path' FROM {SCHEMA}.recording UNION SELECT doc ->> 'path' FROM {SCHEMA}.recording WHERE doc IS NOT NULL").fetchall()}
    stored = {str(p.relative_to(root)) for p in (root / "_hash" / SCHEMA).rglob("*") if p.is_file()}
    assert stored == referenced, stored ^ referenced
    assert not [p for p in (root / "_dj_trash").rglob("*") if p.is_file() and f"/{SCHEMA}/" in str(p)]


@pytest.fixture
def server_dir(tmp_path):
    """A folder the server's OS user reads and writes."""
    tmp_path.chmod(0o777)
    for p in tmp_path.parents:
        if p == pathlib.Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o005)
    return tmp_path


def put_file(c, attribute, path, filename=None):
    return c.execute(
        "SELECT dj.object_put_file('objs.Recording', %s, %s, %s)", (attribute, str(path), filename)
    ).fetchone()[0]


def test_server_files_stream_in_and_out_as_the_same_objects(db, python, server_dir):
    import os

    # Three 8 MiB parts, the last one short.
    content = os.urandom(2 * (8 << 20) + 12345)
    source = server_dir / "recording.dat"
    source.write_bytes(content)
    source.chmod(0o644)
    raw = put_file(db, "raw", source)
    assert raw["size"] == len(content)
    # The same object dj.object_put stores for the same bytes.
    assert put(db, "raw", content) == raw
    doc = put_file(db, "doc", source)
    assert db.execute("SELECT filename FROM dj.attach_decode(dj.object_read(%s))", (json.dumps(doc),)).fetchone()[0] == "recording.dat"
    renamed = put_file(db, "doc", source, "renamed.bin")
    assert renamed["hash"] != doc["hash"]
    blob_file = server_dir / "trace.blob"
    blob_file.write_bytes(encode(db, [1.5, 2.5], "float64"))
    blob_file.chmod(0o644)
    trace = put_file(db, "trace", blob_file)
    db.execute(
        f"INSERT INTO {SCHEMA}.recording VALUES (90, %s, %s, %s)", (json.dumps(trace), json.dumps(doc), json.dumps(raw))
    )
    row = (python.Recording & "rec = 90").fetch1()
    np.testing.assert_array_equal(row["trace"], [1.5, 2.5])
    assert pathlib.Path(row["doc"]).read_bytes() == content
    assert row["raw"] == content
    # Out again, hash checked on the way.
    out = server_dir / "out.dat"
    assert db.execute("SELECT dj.object_get_file(%s, %s)", (json.dumps(raw), str(out))).fetchone()[0] == len(content)
    assert out.read_bytes() == content
    stored = store_root(db) / raw["path"]
    damaged = bytearray(content)
    damaged[-1] ^= 1
    stored.write_bytes(bytes(damaged))
    with pytest.raises(psycopg.errors.DataCorrupted, match="does not match its hash"):
        db.execute("SELECT dj.object_get_file(%s, %s)", (json.dumps(raw), str(server_dir / "bad.dat")))
    assert not (server_dir / "bad.dat").exists()
    stored.write_bytes(content)
    # Bad input.
    with pytest.raises(psycopg.errors.InvalidBinaryRepresentation, match="does not hold a blob"):
        put_file(db, "trace", source)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not an absolute path"):
        put_file(db, "raw", "recording.dat")
    with pytest.raises(psycopg.errors.UndefinedFile):
        put_file(db, "raw", server_dir / "missing.dat")
    with pytest.raises(psycopg.errors.WrongObjectType, match="is a directory"):
        put_file(db, "raw", server_dir)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not an attachment"):
        put_file(db, "raw", source, "x.bin")
    assert db.execute("SELECT dj.object_put_file('objs.Recording', 'raw', NULL)").fetchone()[0] is None


def test_server_files_need_the_predefined_roles(db, roles, server_dir):
    source = server_dir / "small.dat"
    source.write_bytes(b"small")
    source.chmod(0o644)
    ref = put(db, "raw", b"small")
    other, writer = connect(user="objs_other"), connect(user="objs_owner")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_read_server_files"):
        put_file(other, "raw", source)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_write_server_files"):
        other.execute("SELECT dj.object_get_file(%s, %s)", (json.dumps(ref), str(server_dir / "x")))
    assert not (server_dir / "x").exists()
    # objs_owner has pg_write_server_files only.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_read_server_files"):
        put_file(writer, "raw", source)
    assert writer.execute("SELECT dj.object_get_file(%s, %s)", (json.dumps(ref), str(server_dir / "y"))).fetchone()[0] == 5
    db.execute("GRANT pg_read_server_files TO objs_other")
    assert put_file(other, "raw", source) == ref
    other.close()
    writer.close()


def test_a_canceled_upload_leaves_nothing_behind(db, server_dir):
    import time

    big = server_dir / "big.dat"
    with open(big, "wb") as f:
        f.truncate(768 << 20)  # sparse: quick to make, slow enough to stream
    big.chmod(0o644)
    root = store_root(db)

    def files():
        return {p for p in root.rglob("*") if p.is_file()}

    before = files()
    c = connect()
    c.execute("SET statement_timeout = '150ms'")
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        put_file(c, "raw", big)
    assert time.monotonic() - started < 3
    c.close()
    assert files() - before == set()


SCAN = "# scans\nscan : int32\nlabel : varchar(120)\n---\narr = null : <npy@local>\nmovie = null : <object@local>"


@pytest.fixture
def scans(db, python):
    db.execute(f"DROP TABLE IF EXISTS {SCHEMA}.scan")
    db.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.Scan", SCAN))
    yield dj.VirtualModule("objs_scan", SCHEMA, connection=python.Recording.connection)
    db.execute(f"DROP TABLE IF EXISTS {SCHEMA}.scan")


def npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_npy_and_object_attributes_both_directions(db, scans, server_dir):
    key = {"scan": 1, "label": "left/right: v2"}
    array = np.arange(12, dtype="int16").reshape(3, 4)
    arr = db.execute(
        "SELECT dj.object_put('objs.Scan', 'arr', %s, key => %s)", (npy_bytes(array), json.dumps(key))
    ).fetchone()[0]
    # datajoint-python's layout and PK encoding: _schema/{schema}/{table}/{k=v}/{field}_{token}.npy
    prefix = f"_schema/{SCHEMA}/scan/scan=1/label=left%2Fright%3A%20v2/arr_"
    assert arr["path"].startswith(prefix) and arr["path"].endswith(".npy"), arr
    assert len(arr["path"]) == len(prefix) + 8 + 4
    assert arr["dtype"] == "int16" and arr["shape"] == [3, 4] and arr["store"] == "local"
    movie = db.execute(
        "SELECT dj.object_put('objs.Scan', 'movie', 'frames', filename => 'movie.avi', key => %s)", (json.dumps(key),)
    ).fetchone()[0]
    assert movie["ext"] == ".avi" and movie["size"] == 6 and movie["is_dir"] is False
    db.execute(f"INSERT INTO {SCHEMA}.scan VALUES (1, %s, %s, %s)", (key["label"], json.dumps(arr), json.dumps(movie)))
    row = (scans.Scan & {"scan": 1}).fetch1()
    np.testing.assert_array_equal(row["arr"].load(), array)
    assert row["movie"].read() == b"frames"

    # A folder from the server, with datajoint-python's manifest.
    folder = server_dir / "session"
    (folder / "plane0").mkdir(parents=True)
    (folder / "meta.json").write_text('{"fps": 30}')
    (folder / "plane0" / "f0.bin").write_bytes(b"\x00" * 1000)
    for p in [folder, folder / "plane0"]:
        p.chmod(0o755)
    key2 = {"scan": 2, "label": "x"}
    tree = db.execute(
        "SELECT dj.object_put_file('objs.Scan', 'movie', %s, key => %s)", (str(folder), json.dumps(key2))
    ).fetchone()[0]
    assert tree["is_dir"] is True and tree["item_count"] == 2 and tree["size"] == 1011 and tree["ext"] is None
    manifest = json.loads((store_root(db) / (tree["path"] + ".manifest.json")).read_text())
    assert [f["path"] for f in manifest["files"]] == ["meta.json", "plane0/f0.bin"]
    npy_file = server_dir / "a.npy"
    npy_file.write_bytes(npy_bytes(np.ones((2, 2), dtype="float32")))
    npy_file.chmod(0o644)
    arr2 = db.execute(
        "SELECT dj.object_put_file('objs.Scan', 'arr', %s, key => %s)", (str(npy_file), json.dumps(key2))
    ).fetchone()[0]
    assert arr2["dtype"] == "float32" and arr2["shape"] == [2, 2]
    db.execute(f"INSERT INTO {SCHEMA}.scan VALUES (2, 'x', %s, %s)", (json.dumps(arr2), json.dumps(tree)))
    row = (scans.Scan & {"scan": 2}).fetch1()
    assert row["movie"].verify()
    assert sorted(row["movie"].listdir()) == ["meta.json", "plane0"]
    np.testing.assert_array_equal(row["arr"].load(), np.ones((2, 2), dtype="float32"))

    # What datajoint-python stores, we read.
    scans.Scan.insert1({"scan": 3, "label": "py", "arr": np.array([1.5, 2.5]), "movie": str(folder / "meta.json")})
    theirs = db.execute(f"SELECT arr, movie FROM {SCHEMA}.scan WHERE scan = 3").fetchone()
    assert db.execute("SELECT dj.object_read(%s)", (json.dumps(theirs[1]),)).fetchone()[0] == b'{"fps": 30}'
    raw = db.execute("SELECT dj.object_read(%s)", (json.dumps(theirs[0]),)).fetchone()[0]
    assert raw.startswith(b"\x93NUMPY")

    # gc keeps all of it while referenced, and takes an unreferenced folder whole.
    db.execute(f"DELETE FROM {SCHEMA}.scan WHERE scan = 2")
    actions = gc(db, False)
    assert actions[tree["path"] + "/plane0/f0.bin"] == "quarantined"
    assert actions[tree["path"] + ".manifest.json"] == "quarantined"
    assert all(not k.startswith(arr["path"]) for k in actions)

    # Bad keys and contents.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="primary key"):
        db.execute("SELECT dj.object_put('objs.Scan', 'arr', %s)", (npy_bytes(array),))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not an attribute of the primary key"):
        db.execute("SELECT dj.object_put('objs.Scan', 'arr', %s, key => %s)", (npy_bytes(array), json.dumps({**key, "x": 1})))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no value for label"):
        db.execute("SELECT dj.object_put('objs.Scan', 'arr', %s, key => %s)", (npy_bytes(array), json.dumps({"scan": 1})))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a .npy file"):
        db.execute("SELECT dj.object_put('objs.Scan', 'arr', 'not npy', key => %s)", (json.dumps(key),))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a valid object key"):
        db.execute("SELECT dj.object_put('objs.Scan', 'movie', 'x', filename => 'a.b\nc', key => %s)", (json.dumps(key),))


def test_filepath_references_files_already_in_the_store(db, python):
    db.execute(f"DROP TABLE IF EXISTS {SCHEMA}.raw_file")
    db.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.RawFile", "f : int32\n---\nsrc : <filepath@local>"))
    root = store_root(db)
    (root / "raw" / "s1").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "s1" / "movie.avi").write_bytes(b"movie bytes")
    ref = db.execute("SELECT dj.filepath_ref('objs.RawFile', 'src', 'raw/s1/movie.avi')").fetchone()[0]
    assert ref["path"] == "raw/s1/movie.avi" and ref["size"] == 11 and ref["is_dir"] is False and ref["store"] == "local"
    folder = db.execute("SELECT dj.filepath_ref('objs.RawFile', 'src', 'raw/s1')").fetchone()[0]
    assert folder["is_dir"] is True and folder["size"] is None
    db.execute(f"INSERT INTO {SCHEMA}.raw_file VALUES (1, %s)", (json.dumps(ref),))
    module = dj.VirtualModule("objs_raw", SCHEMA, connection=python.Recording.connection)
    assert (module.RawFile & "f = 1").fetch1("src").read() == b"movie bytes"
    assert db.execute("SELECT dj.object_read(src) FROM objs.raw_file").fetchone()[0] == b"movie bytes"
    # Never collected, referenced or not.
    db.execute(f"DELETE FROM {SCHEMA}.raw_file")
    gc(db, False)
    gc(db, False)
    assert (root / "raw" / "s1" / "movie.avi").exists()
    for bad, error in [
        ("_hash/objs/x", psycopg.errors.InvalidParameterValue),
        ("_schema/objs/x", psycopg.errors.InvalidParameterValue),
        ("../../postgresql.conf", psycopg.errors.InvalidParameterValue),
        ("/etc/passwd", psycopg.errors.InvalidParameterValue),
        ("raw/none.avi", psycopg.errors.UndefinedFile),
    ]:
        with pytest.raises(error):
            db.execute("SELECT dj.filepath_ref('objs.RawFile', 'src', %s)", (bad,))
    with pytest.raises(psycopg.errors.WrongObjectType):
        db.execute("SELECT dj.filepath_ref('objs.Recording', 'raw', 'raw/s1/movie.avi')")
    db.execute(f"DROP TABLE {SCHEMA}.raw_file")


def test_object_refs_as_plain_columns_for_bi_tools(db, roles):
    trace = put(db, "trace", encode(db, [7, 8], "int32"))
    doc = put(db, "doc", b"report", "report.txt")
    db.execute(f"INSERT INTO {SCHEMA}.recording VALUES (77, %s, %s, NULL)", (json.dumps(trace), json.dumps(doc)))
    rows = db.execute(
        "SELECT attribute, key, store, path, size, hash, is_dir, reference FROM dj.object_refs('objs.Recording') "
        "WHERE key = '{\"rec\": 77}' ORDER BY attribute"
    ).fetchall()
    assert [r[0] for r in rows] == ["doc", "trace"]
    assert rows[1][1:7] == ({"rec": 77}, "local", trace["path"], trace["size"], trace["hash"], False)
    assert rows[1][7] == trace
    # Read as the caller: a role without SELECT on the table sees nothing.
    db.execute(f"REVOKE SELECT ON {SCHEMA}.recording FROM objs_other")
    other = connect(user="objs_other")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        other.execute("SELECT * FROM dj.object_refs('objs.Recording')")
    other.close()
    db.execute(f"DELETE FROM {SCHEMA}.recording WHERE rec = 77")


def test_gc_and_drop_store_see_a_type_declared_with_spaces(db):
    db.execute(f"DROP TABLE IF EXISTS {SCHEMA}.spaced")
    db.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{SCHEMA}.Spaced", "k : int32\n---\nv : < blob @ local >"))
    ref = db.execute("SELECT dj.object_put('objs.Spaced', 'v', dj.blob_encode('\"spaced\"'::jsonb))").fetchone()[0]
    db.execute(f"INSERT INTO {SCHEMA}.spaced VALUES (1, %s)", (json.dumps(ref),))
    gc(db, False)
    gc(db, False)
    assert (store_root(db) / ref["path"]).exists()
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="objs.spaced.v"):
        db.execute("SELECT dj.drop_store('local')")
    db.execute(f"DROP TABLE {SCHEMA}.spaced")
