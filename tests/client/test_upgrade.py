"""ALTER EXTENSION datajoint UPDATE from the released 0.1.0, with a pipeline in place: the catalog
it leaves equals a fresh install's, and the pipeline keeps working (its make bound to the code it
ran before). scripts/test.sh installs the released install script (tests/upgrade/) next to the
current build's."""
import os
import subprocess

import psycopg
import pytest

from conftest import REPO

MISBEHAVE = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()
PREVIOUS = "0.1.0"


def db(name: str) -> psycopg.Connection:
    return psycopg.connect(dbname=name, autocommit=True)


def current_version() -> str:
    control = (REPO / "Cargo.toml").read_text()
    return next(line.split('"')[1] for line in control.splitlines() if line.startswith("version = "))


# Everything the extension owns, in a form that does not depend on how it got there (object oids,
# column numbers left by dropped columns, creation order).
CATALOG = """
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'datajoint'),
members AS (SELECT classid, objid FROM pg_depend WHERE refclassid = 'pg_extension'::regclass
            AND refobjid = (SELECT oid FROM ext) AND deptype = 'e')
SELECT 'function ' || p.oid::regprocedure, concat_ws(' | ', pg_get_functiondef(p.oid), p.proacl::text,
       obj_description(p.oid, 'pg_proc'))
  FROM pg_proc p WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
UNION ALL
SELECT 'table ' || c.oid::regclass, concat_ws(' | ', c.relkind, c.relacl::text, c.relrowsecurity,
       obj_description(c.oid, 'pg_class'),
       (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull
                          || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum)
          FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
  FROM pg_class c WHERE c.oid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'constraint ' || co.conrelid::regclass || '.' || co.conname, pg_get_constraintdef(co.oid)
  FROM pg_constraint co WHERE co.conrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'index ' || i.indexrelid::regclass, pg_get_indexdef(i.indexrelid)
  FROM pg_index i WHERE i.indrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'policy ' || po.polrelid::regclass || '.' || po.polname,
       concat_ws(' | ', po.polcmd, po.polroles::text, pg_get_expr(po.polqual, po.polrelid),
                 pg_get_expr(po.polwithcheck, po.polrelid))
  FROM pg_policy po WHERE po.polrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'trigger ' || t.tgrelid::regclass || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t WHERE t.tgrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
   AND NOT t.tgisinternal
UNION ALL
SELECT 'event trigger ' || e.evtname, concat_ws(' | ', e.evtevent, e.evttags::text, e.evtfoid::regproc, e.evtenabled)
  FROM pg_event_trigger e WHERE e.oid IN (SELECT objid FROM members WHERE classid = 'pg_event_trigger'::regclass)
UNION ALL
SELECT 'operator ' || o.oid::regoperator, concat_ws(' | ', o.oprcode::regproc, obj_description(o.oid, 'pg_operator'))
  FROM pg_operator o WHERE o.oid IN (SELECT objid FROM members WHERE classid = 'pg_operator'::regclass)
UNION ALL
SELECT 'type ' || t.oid::regtype, concat_ws(' | ', t.typinput::regproc, t.typoutput::regproc,
       obj_description(t.oid, 'pg_type'))
  FROM pg_type t WHERE t.oid IN (SELECT objid FROM members WHERE classid = 'pg_type'::regclass)
UNION ALL
SELECT 'cast ' || format_type(c.castsource, NULL) || ' -> ' || format_type(c.casttarget, NULL),
       concat_ws(' | ', c.castfunc::regproc, c.castcontext)
  FROM pg_cast c WHERE c.oid IN (SELECT objid FROM members WHERE classid = 'pg_cast'::regclass)
UNION ALL
SELECT 'schema ' || n.nspname, concat_ws(' | ', n.nspacl::text, obj_description(n.oid, 'pg_namespace'))
  FROM pg_namespace n WHERE n.nspname = 'dj'
UNION ALL
SELECT 'dumped ' || x.cfg::regclass, coalesce(x.cond, '')
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond) WHERE e.extname = 'datajoint'
"""


def catalog(c) -> dict:
    return dict(c.execute(CATALOG).fetchall())


@pytest.fixture
def databases():
    admin = psycopg.connect(autocommit=True, dbname=os.environ.get("PGDATABASE", "datajoint"))
    share = subprocess.run(["/usr/lib/postgresql/15/bin/pg_config", "--sharedir"], capture_output=True,
                           text=True, check=True).stdout.strip()
    if not os.path.exists(f"{share}/extension/datajoint--{PREVIOUS}.sql"):
        pytest.fail(f"datajoint--{PREVIOUS}.sql is not installed: run through scripts/test.sh (it installs "
                    "tests/upgrade/ with the build)")
    names = ("dj_upgraded", "dj_fresh")
    for name in names:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    yield names
    for name in names:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def test_update_from_the_released_version_with_data_in_place(databases):
    upgraded_name, fresh_name = databases
    old = db(upgraded_name)
    old.execute(f"CREATE EXTENSION datajoint VERSION '{PREVIOUS}'")
    assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'datajoint'").fetchone() == (PREVIOUS,)
    # A pipeline as 0.1.0 left it: declared tables, enforcement, a registered module (0.1.0 kept the
    # component in dj.modules), a table bound to it by name, rows it made, compiled code.
    old.execute("SELECT dj.declare('lab.Case', 'manual', 'case_id : int32\n---\nmode : varchar(16)\nn : int64')")
    old.execute("SELECT dj.declare('lab.Outcome', 'computed', '-> Case\n---\nvalue : int64')")
    old.execute("INSERT INTO lab.case VALUES (1, 'ok', 1), (2, 'ok', 2), (3, 'err', 3)")
    sha = old.execute("INSERT INTO dj.modules (name, sha256, component) "
                      "VALUES ('misbehave', encode(sha256(%s), 'hex'), %s) RETURNING sha256",
                      (MISBEHAVE, MISBEHAVE)).fetchone()[0]
    old.execute("INSERT INTO dj.makes (schema_name, table_name, module) VALUES ('lab', '__outcome', 'misbehave')")
    old.execute("INSERT INTO dj.module_artifacts (sha256, engine, artifact) VALUES (%s, 'wasmtime-48.0.8-old', 'x')",
                (sha,))
    old.execute("INSERT INTO lab.__outcome (case_id, value, _job_version) VALUES (1, 2, %s)", (sha,))
    old.execute("SELECT dj.enforce_tiers('lab')")

    old.execute("ALTER EXTENSION datajoint UPDATE")
    version = current_version()
    assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'datajoint'").fetchone() == (version,)

    # The catalog is what a fresh install of this version creates.
    fresh = db(fresh_name)
    fresh.execute("CREATE EXTENSION datajoint")
    want, got = catalog(fresh), catalog(old)
    assert set(got) == set(want), (set(got) ^ set(want))
    different = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not different, different
    fresh.close()

    # The data came along: the module's code is a version, the table is bound to it by content.
    assert old.execute("SELECT m.name, m.sha256, v.registered_by FROM dj.modules m "
                       "JOIN dj.module_versions v USING (sha256)").fetchall() == [("misbehave", sha, "postgres")]
    assert old.execute("SELECT module, sha256 FROM dj.makes").fetchall() == [("misbehave", sha)]
    # Unsealed machine code of 0.1.0 is gone; the make runs, compiled anew.
    assert old.execute("SELECT count(*) FROM dj.module_artifacts WHERE engine = 'wasmtime-48.0.8-old'").fetchone() == (0,)
    assert old.execute("SELECT * FROM dj.populate('lab.Outcome', suppress_errors => true)").fetchone() == (1, 1, 1)
    assert old.execute("SELECT count(*) FROM dj.stale('lab.Outcome')").fetchone() == (0,)
    assert old.execute("SELECT count(DISTINCT _job_version) FROM lab.__outcome").fetchone() == (1,)
    # 0.2's rules hold on the upgraded database too.
    assert old.execute("SELECT has_function_privilege('public', 'dj.register_module(text, bytea)', 'EXECUTE')"
                       ).fetchone() == (False,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        old.execute("CREATE TABLE lab.__copied AS SELECT * FROM lab.__outcome")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        old.execute("INSERT INTO lab.__outcome (case_id, value) VALUES (3, 0)")
    assert old.execute("SELECT dj.unregister_module('misbehave')").fetchone() == (True,)
    assert old.execute("SELECT count(*) FROM dj.module_versions").fetchone() == (1,)  # still bound
    old.close()
