"""Attacks on a shared server, as ordinary LOGIN roles would try them: shadowing operators,
functions and types on the search_path, forged machine code, compile bombs, huge fetches, values
PostgreSQL cannot read back, tables that dodge the tier guard, swapped module code, and concurrent
populates of one table. Each case failed before the security issue was fixed."""
import os
import re
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors

from conftest import REPO, connect

MISBEHAVE = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()
SPIKE_RATE = (REPO / "udfs" / "components" / "spike_rate.wasm").read_bytes()
ROLES = ("dj_mallory", "dj_alice", "dj_bob")
PG_BIN = "/usr/lib/postgresql/15/bin"


def as_role(role: str) -> psycopg.Connection:
    """A real login as `role` (trust authentication on the test cluster's socket)."""
    return connect(user=role)


def vm(pid: int, field: str) -> int:
    """A backend's /proc/<pid>/status figure (VmHWM, VmSize, VmPeak...) in bytes."""
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1)) * 1024


@pytest.fixture(scope="module")
def roles():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    for r in ROLES:
        c.execute(f"DROP OWNED BY {r}" if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone() else "SELECT 1")
        c.execute(f"DROP ROLE IF EXISTS {r}")
        c.execute(f"CREATE ROLE {r} LOGIN")
        c.execute(f"GRANT CREATE ON DATABASE {c.info.dbname} TO {r}")
    yield c
    for r in ROLES:
        c.execute(f"REVOKE ALL ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) FROM {r}")
        for (schema,) in c.execute("SELECT nspname FROM pg_namespace WHERE nspowner = %s::regrole", (r,)).fetchall():
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')
            c.execute("DELETE FROM dj.schema_settings WHERE schema_name = %s", (schema,))
        c.execute(f"DROP OWNED BY {r}")
        c.execute(f"REVOKE CREATE ON DATABASE {c.info.dbname} FROM {r}")
        c.execute(f"DROP ROLE {r}")
    c.close()


def case_pipeline(c, schema: str, value_type: str = "int64", rows=()):
    """Case/Outcome with the misbehave make (Outcome's `value` of the type a test needs)."""
    c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    c.execute("SELECT dj.declare(%s, 'manual', 'case_id : int32\n---\nmode : varchar(16)\nn : int64')", (f"{schema}.Case",))
    c.execute("SELECT dj.declare(%s, 'computed', %s)", (f"{schema}.Outcome", f"-> Case\n---\nvalue : {value_type}"))
    c.execute(f"SELECT dj.set_make('{schema}.Outcome', 'misbehave')")
    for row in rows:
        c.execute(f"INSERT INTO {schema}.case VALUES (%s, %s, %s)", row)


@pytest.fixture(scope="module")
def modules(roles):
    roles.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    roles.execute("SELECT dj.register_module('spike_rate', %s)", (SPIKE_RATE,))
    yield roles


# -------------------------------------------------------------------------------------------------
# 1. Nothing on a caller's search_path runs inside the extension.

# Operators of pg_catalog that the extension's SQL could use, shadowed for these argument types.
SHADOWED_OPERATORS = ("=", "<>", "<", ">", "<=", ">=", "~~", "!~~", "~", "||", "+", "-", "@>", "->", "->>")
SHADOWED_TYPES = ("text", "name", "oid", "int2", "int4", "int8", "bool", "bytea", "jsonb", "char", "float8",
                  "numeric", "timestamp", "timestamptz", "regclass", "_text", "int2vector")
# Functions the extension's SQL calls (unqualified, they would resolve here first).
SHADOWED_FUNCTIONS = {
    "format(text, text, text)": "text", "pg_has_role(name, text)": "bool", "pg_has_role(oid, text)": "bool",
    "pg_has_role(name, name, text)": "bool", "current_setting(text)": "text", "set_config(text, text, bool)": "text",
    "encode(bytea, text)": "text", "sha256(bytea)": "bytea", "to_regclass(text)": "regclass",
    "to_regtype(text)": "regtype", "format_type(oid, int4)": "text", "col_description(oid, int4)": "text",
    "obj_description(oid, name)": "text", "lower(text)": "text", "left(text, int4)": "text", "now()": "timestamptz",
    "pg_backend_pid()": "int4", "inet_client_addr()": "inet", "host(inet)": "text",
    "to_jsonb(anyelement)": "jsonb", "array_position(anyarray, anyelement)": "int4",
    "pg_get_expr(pg_node_tree, oid)": "text", "pg_advisory_xact_lock(int4, int4)": "void",
    "pg_try_advisory_xact_lock(int4, int4)": "bool", "jsonb_populate_record(anyelement, jsonb)": "anyelement",
}


def build_shadows(c, schema: str):
    """A schema of look-alikes: every operator, function and type above, each recording who ran it
    (into {schema}.calls) before doing what PostgreSQL's own would."""
    c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    c.execute(f"CREATE SCHEMA {schema}")
    c.execute(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    c.execute(f"CREATE TABLE {schema}.calls (who name DEFAULT current_user, what text)")
    c.execute(f"GRANT INSERT, SELECT ON {schema}.calls TO PUBLIC")
    c.execute(f"""CREATE FUNCTION {schema}.note(what text) RETURNS bool LANGUAGE sql AS
                  $$ INSERT INTO {schema}.calls (what) VALUES (what) RETURNING true $$""")
    ops = c.execute(
        """SELECT o.oprname, o.oprleft::regtype::text, o.oprright::regtype::text, o.oprresult::regtype::text,
                  o.oprcode::regproc::text
             FROM pg_operator o
            WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = ANY (%s)
              AND o.oprleft = ANY (%s::regtype[]) AND o.oprright = ANY (%s::regtype[])""",
        (list(SHADOWED_OPERATORS), list(SHADOWED_TYPES), list(SHADOWED_TYPES)),
    ).fetchall()
    for i, (op, left, right, result, code) in enumerate(ops):
        code = code if "." in code else f"pg_catalog.{code}"
        c.execute(f"""CREATE FUNCTION {schema}.op_{i}(a {left}, b {right}) RETURNS {result} LANGUAGE plpgsql AS
                      $$ BEGIN PERFORM {schema}.note('operator {op}({left}, {right})'); RETURN {code}(a, b); END $$""")
        c.execute(f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {schema}.op_{i})")
    for signature, result in SHADOWED_FUNCTIONS.items():
        name, args = signature.split("(", 1)
        args = [a.strip() for a in args.rstrip(")").split(",") if a.strip()]
        params = ", ".join(f"a{i} {t}" for i, t in enumerate(args))
        call = ", ".join(f"a{i}" for i in range(len(args)))
        ret = "" if result == "void" else "RETURN "
        body = f"PERFORM {schema}.note('function {signature}'); {ret}pg_catalog.{name}({call});" if result != "void" \
            else f"PERFORM {schema}.note('function {signature}'); PERFORM pg_catalog.{name}({call});"
        c.execute(f"CREATE FUNCTION {schema}.{name}({params}) RETURNS {result} LANGUAGE plpgsql AS $$ BEGIN {body} END $$")
    for t in ("text", "name", "oid", "int4", "int8", "bool", "regclass", "jsonb"):
        c.execute(f"CREATE DOMAIN {schema}.{t} AS pg_catalog.{t} CHECK ({schema}.note('type {t}'))")
    # Tables named like the catalogs the extension reads.
    for t in ("pg_class", "pg_namespace", "pg_attribute", "pg_index", "pg_extension", "pg_trigger"):
        c.execute(f"CREATE TABLE {schema}.{t} (oid oid CHECK ({schema}.note('table {t}')))")
    return len(ops)


def every_public_function(c) -> dict:
    """Each dj function called once under a hostile search_path, with arguments that make it do its
    work (SQL inside). The calls themselves name every type and operator with its schema: only what
    the extension runs inside may meet the shadows. Returns {function name: statement}."""
    calls = {
        "declare": "SELECT dj.declare('sec_path.Extra', 'manual', 'extra_id : int32')",
        "tables": "SELECT * FROM dj.tables('sec_path')",
        "describe": "SELECT dj.describe('sec_path.Outcome')",
        "heading": "SELECT * FROM dj.heading('sec_path.Outcome')",
        "parents": "SELECT * FROM dj.parents('sec_path.Outcome')",
        "children": "SELECT * FROM dj.children('sec_path.Case')",
        "ancestors": "SELECT * FROM dj.ancestors('sec_path.Outcome')",
        "descendants": "SELECT * FROM dj.descendants('sec_path.Case')",
        "topological_order": "SELECT * FROM dj.topological_order('sec_path')",
        "diagram": "SELECT dj.diagram(ARRAY['sec_path'], 'svg'), dj.diagram('sec_path.Case')",
        "delete_preview": "SELECT * FROM dj.delete_preview('sec_path.Case', 'case_id = 3', '{\"case_id\": 3}')",
        "delete": "SELECT * FROM dj.delete('sec_path.Case', 'mode = ''a\\b''', '[{\"case_id\": 3}]')",
        "enforce_tiers": "SELECT dj.enforce_tiers('sec_path')",
        "register_module": "SELECT dj.register_module('sec_path_copy', pg_catalog.decode('%s', 'hex'))"
                           % MISBEHAVE.hex(),
        "set_make": "SELECT dj.set_make('sec_path.Outcome', 'sec_path_copy')",
        "key_source": "SELECT * FROM dj.key_source('sec_path.Outcome', 'case_id > 0')",
        "progress": "SELECT * FROM dj.progress('sec_path.Outcome')",
        "populate": "SELECT * FROM dj.populate('sec_path.Outcome', 'case_id < 5', suppress_errors => true)",
        "populate_async": "SELECT * FROM dj.wait(dj.populate_async('sec_path.Outcome', 'case_id > 0', "
                          "suppress_errors => true, workers => 2))",
        "populate_all": "SELECT * FROM dj.populate_all(ARRAY['sec_path.Outcome'], suppress_errors => true, workers => 2)",
        "populate_all_async": "SELECT * FROM dj.wait(dj.populate_all_async(ARRAY['sec_path.Outcome'], "
                              "suppress_errors => true))",
        "wait": "SELECT * FROM dj.wait((SELECT pg_catalog.max(id) FROM dj.runs))",
        "cancel": "SELECT dj.cancel((SELECT pg_catalog.max(id) FROM dj.runs))",
        "_live_runs": "SELECT * FROM dj.runs",
        "jobs_refresh": "SELECT * FROM dj.jobs_refresh('sec_path.Outcome', 'case_id > 0')",
        "jobs": "SELECT * FROM dj.jobs('sec_path.Outcome')",
        "jobs_reserve": "SELECT dj.jobs_reserve('sec_path.Outcome', 'case_id > 0')",
        "jobs_ignore": "SELECT dj.jobs_ignore('sec_path.Outcome', 'case_id = 2')",
        "jobs_clear_errors": "SELECT dj.jobs_clear_errors('sec_path.Outcome', 'case_id > 0')",
        "stale": "SELECT * FROM dj.stale('sec_path.Outcome')",
        "unregister_module": "SELECT dj.unregister_module('sec_path_copy')",
        "rel": "SELECT dj.rel('sec_path.Case')",
        "rel_join": "SELECT dj.rel_join(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome'))",
        "rel_union": "SELECT dj.rel_union(dj.proj(dj.rel('sec_path.Case')), dj.proj(dj.rel('sec_path.Outcome')))",
        "rel_restrict_text": "SELECT dj.rel_restrict_text(dj.rel('sec_path.Case'), 'n > 1')",
        "rel_restrict_jsonb": "SELECT dj.rel_restrict_jsonb(dj.rel('sec_path.Case'), '{\"case_id\": 1}')",
        "rel_restrict_list": "SELECT dj.rel_restrict_list(dj.rel('sec_path.Case'), ARRAY['n > 1'])",
        "rel_exclude_text": "SELECT dj.rel_exclude_text(dj.rel('sec_path.Case'), 'n > 1')",
        "rel_exclude_jsonb": "SELECT dj.rel_exclude_jsonb(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome')::pg_catalog.jsonb)",
        "rel_exclude_list": "SELECT dj.rel_exclude_list(dj.rel('sec_path.Case'), ARRAY['n > 1'])",
        "relation_condition": "SELECT dj.relation_condition(dj.rel('sec_path.Case'))",
        "not": "SELECT dj.not('n > 1'), dj.not('{}'::pg_catalog.jsonb), dj.not(dj.rel('sec_path.Case'))",
        "proj": "SELECT dj.proj(dj.rel('sec_path.Case'), 'twice = n * 2'), dj.proj(dj.rel('sec_path.Case'))",
        "aggr": "SELECT dj.aggr(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome'), 'k = count(*)'), "
                "dj.aggr(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome'), ARRAY['k = count(*)'], true)",
        "extend": "SELECT dj.extend(dj.rel('sec_path.Outcome'), dj.rel('sec_path.Case'))",
        "top": "SELECT dj.top(dj.rel('sec_path.Case'), 2, 'n DESC')",
        "u": "SELECT dj.u('mode'), dj.u()",
        "sql": "SELECT dj.sql(dj.rel('sec_path.Case') & 'mode = ''ok''')",
        "fetch": "SELECT * FROM dj.fetch(dj.rel('sec_path.Case') & 'mode = ''ok''', 'n DESC', 10)",
        "fetch1": "SELECT dj.fetch1(dj.rel('sec_path.Case') & '{\"case_id\": 1}')",
        "fetch_json": "SELECT * FROM dj.fetch_json(dj.rel('sec_path.Case'), 'n DESC', 10)",
        "query": "SELECT * FROM dj.query(dj.rel('sec_path.Case'), 'KEY') AS t(case_id pg_catalog.int4, "
                 "mode pg_catalog.varchar, n pg_catalog.int8)",
        "_query_sql": "SELECT dj._query_sql(dj.rel('sec_path.Case'))",
        "temp_view": "SELECT dj.temp_view(dj.rel('sec_path.Case'), 'cases')",
        "join": "SELECT dj.join(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome'))",
        "union": "SELECT dj.union(dj.proj(dj.rel('sec_path.Case')), dj.proj(dj.rel('sec_path.Outcome')))",
        "restrict": "SELECT dj.restrict(dj.rel('sec_path.Case'), 'n > 1'), "
                    "dj.restrict(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome'))",
        "exclude": "SELECT dj.exclude(dj.rel('sec_path.Case'), ARRAY['n > 1']), "
                   "dj.exclude(dj.rel('sec_path.Case'), dj.rel('sec_path.Outcome'))",
        "_pipeline_tables": "SELECT * FROM dj.pipeline_tables",
        "_pipeline_columns": "SELECT * FROM dj.pipeline_columns",
        "count": "SELECT dj.count(dj.rel('sec_path.Case'))",
        "primary_key": "SELECT dj.primary_key(dj.rel('sec_path.Case'))",
        "create_view": "SELECT dj.create_view('sec_path.view', dj.rel('sec_path.Case'), true)",
        "drop": "SELECT * FROM dj.drop('sec_path.Extra')",
        "version": "SELECT dj.version()",
        "_sandbox_call": "SELECT dj._sandbox_call(convert_to('(module (func (export \"run\") (result i32) i32.const 7))', 'UTF8'))",
        "_pipeline_write_allowed": "SELECT dj._pipeline_write_allowed('sec_path.case'::pg_catalog.regclass, 'INSERT')",
        "_guard_table": "SELECT dj._guard_table('sec_path.__outcome'::pg_catalog.regclass)",
        # Trigger and event-trigger functions, through what fires them.
        "_tier_guard": "INSERT INTO sec_path.__outcome SELECT 99, 1",
        "_holds_reservation": "SELECT dj._holds_reservation('sec_path.__outcome'::pg_catalog.regclass)",
        "_reserved_rows_sql": "SELECT dj._reserved_rows_sql('sec_path.__outcome'::pg_catalog.regclass, 'dj_new_rows')",
        # An insert of a key this session reserved passes the guard; the row guard checks it.
        "_tier_guard_rows": "INSERT INTO sec_path.case VALUES (7, 'ok', 7); "
                            "SELECT dj.jobs_refresh('sec_path.Outcome'); "
                            "SELECT dj.jobs_reserve('sec_path.Outcome', 'case_id = 7'); "
                            "INSERT INTO sec_path.__outcome (case_id, value) VALUES (7, 14)",
        "_guard_new_tables": "CREATE TABLE sec_path.__moved (id int)",
        "_names_table": "ALTER TABLE sec_path.__moved RENAME TO __renamed",
        "_forget_dropped_tables": "DROP TABLE sec_path.__renamed",
        "_collect_module_versions": "DROP TABLE sec_path.__renamed_too",
        # Populate on insert: its triggers queue (and drop) keys, its workers make them.
        "auto_populate": "SELECT dj.auto_populate('sec_path.Outcome'); SELECT pg_catalog.pg_sleep(0.5)",
        "_auto_populate_trigger": "BEGIN; INSERT INTO sec_path.case VALUES (8, 'ok', 8); "
                                  "DELETE FROM sec_path.case WHERE case_id OPERATOR(pg_catalog.=) 8; COMMIT; "
                                  "INSERT INTO sec_path.case VALUES (9, 'ok', 9); SELECT pg_catalog.pg_sleep(0.5); "
                                  "SELECT dj.auto_populate('sec_path.Outcome', false)",
        # Stores and objects (a file store of the test's own; a server file the superuser may read).
        "add_store": "SELECT dj.add_store('sec_store', '{\"protocol\": \"file\", \"location\": \"sec_store\"}'::pg_catalog.jsonb, true)",
        "grant_store": "SELECT dj.grant_store('sec_store', 'public')",
        "revoke_store": "SELECT dj.revoke_store('sec_store', 'public')",
        "store_config": "SELECT dj.store_config()",
        "blob_encode": "SELECT dj.blob_encode('[1, 2]'::pg_catalog.jsonb, 'float64')",
        "blob_decode": "SELECT dj.blob_decode(dj.blob_encode('{\"a\": [1, 2.5]}'::pg_catalog.jsonb, NULL))",
        "attach_encode": "SELECT dj.attach_encode('a.txt', pg_catalog.convert_to('abc', 'UTF8'))",
        "attach_decode": "SELECT * FROM dj.attach_decode(dj.attach_encode('a.txt', pg_catalog.convert_to('abc', 'UTF8')))",
        "object_put": "SELECT dj.declare('sec_path.Stash', 'manual', 'k : int32\n---\nb : <blob@sec_store>\no = null : <object@sec_store>\np = null : <filepath@sec_store>'); "
                      "INSERT INTO sec_path.stash VALUES (1, dj.object_put('sec_path.Stash', 'b', "
                      "dj.blob_encode('[1]'::pg_catalog.jsonb, NULL)))",
        "object_put_file": "UPDATE sec_path.stash SET o = dj.object_put_file('sec_path.Stash', 'o', "
                           "pg_catalog.current_setting('data_directory') OPERATOR(pg_catalog.||) '/PG_VERSION', "
                           "key => '{\"k\": 1}'::pg_catalog.jsonb)",
        # Into the store's own folder, for filepath_ref next.
        "object_get_file": "SELECT dj.object_get_file(b, pg_catalog.concat(pg_catalog.current_setting('data_directory'), "
                           "'/sec_store/', pg_catalog.current_database(), '/f.bin')) FROM sec_path.stash",
        "filepath_ref": "UPDATE sec_path.stash SET p = dj.filepath_ref('sec_path.Stash', 'p', 'f.bin')",
        "object_refs": "SELECT * FROM dj.object_refs('sec_path.Stash')",
        "object_read": "SELECT dj.object_read(b), dj.object_read(o, 0, 2) FROM sec_path.stash",
        "object_info": "SELECT dj.object_info(o) FROM sec_path.stash",
        "object_verify": "SELECT dj.object_verify(b) FROM sec_path.stash",
        "object_url": "SELECT dj.object_url(b) FROM sec_path.stash",
        "gc": "SELECT * FROM dj.gc('sec_store', dry_run => false, grace => '0')",
        "drop_store": "DROP TABLE sec_path.stash; SELECT dj.drop_store('sec_store')",
    }
    return calls


def test_no_statement_of_the_extension_resolves_a_callers_shadows(modules, roles):
    c = roles
    c.execute("DROP SCHEMA IF EXISTS sec_path CASCADE")
    case_pipeline(c, "sec_path", rows=[(1, "ok", 1), (2, "err", 2), (3, "ok", 3)])
    mallory = as_role("dj_mallory")
    n_operators = build_shadows(mallory, "dj_mallory_evil")
    assert n_operators > 100
    calls = every_public_function(c)
    # Every function of the extension is in the list (a new one must be added to it).
    in_schema = {r[0] for r in c.execute(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'dj'::regnamespace "
        "AND p.proname NOT IN ('relation_in', 'relation_out')").fetchall()}
    assert in_schema <= set(calls), in_schema - set(calls)

    victim = connect()  # a superuser whose session has the attacker's schema first on the path
    victim.execute("CREATE TABLE sec_path.__renamed_too (id int)")
    victim.execute("SET search_path = dj_mallory_evil, pg_catalog, public")
    # Pool workers start sessions of their own: the database's default path is the attacker's too.
    database = victim.info.dbname
    c.execute(f"ALTER DATABASE {database} SET search_path = dj_mallory_evil, pg_catalog, public")
    victim.execute("SET standard_conforming_strings = off")
    try:
        resolved = {}
        for name, sql in calls.items():
            try:
                victim.execute(sql)
            except psycopg.errors.InsufficientPrivilege as e:
                assert name == "_tier_guard", (name, e)  # the guard refuses the direct insert, as it should
            except psycopg.Error as e:
                raise AssertionError(f"{name}: {e}") from e
            rows = mallory.execute("DELETE FROM dj_mallory_evil.calls RETURNING who, what").fetchall()
            if rows:
                resolved[name] = rows
    finally:
        c.execute(f"ALTER DATABASE {database} RESET search_path")
    assert resolved == {}, resolved
    # The shadows are live: the same session resolves them in its own statements.
    victim.execute("SELECT 'a'::text = 'a'::text")
    assert mallory.execute("SELECT count(*) FROM dj_mallory_evil.calls").fetchone()[0] >= 1
    victim.close()
    mallory.close()
    c.execute("DROP SCHEMA sec_path CASCADE")
    c.execute("DELETE FROM dj.schema_settings WHERE schema_name = 'sec_path'")


def test_standard_conforming_strings_off_changes_no_restriction(modules, roles):
    c = roles
    case_pipeline(c, "sec_scs", rows=[(1, "a\\b", 1), (2, "a'b", 2), (3, "ok", 3)])
    other = connect()
    other.execute("SET standard_conforming_strings = off")
    # Conditions mean what they say in standard SQL whatever the session's setting.
    rows = other.execute("SELECT * FROM dj.fetch(dj.rel('sec_scs.Case') & %s)", ("mode = 'a\\b'",)).fetchall()
    assert [r[0]["case_id"] for r in rows] == [1]
    rows = other.execute("SELECT * FROM dj.fetch(dj.rel('sec_scs.Case') & %s)", ("mode = 'a''b' OR n = 3",)).fetchall()
    assert sorted(r[0]["case_id"] for r in rows) == [2, 3]
    assert other.execute("SELECT count(*) FROM dj.delete_preview('sec_scs.Case', %s)", ("mode = 'a\\b'",)).fetchone()[0] == 2
    removed = other.execute("SELECT rows FROM dj.delete('sec_scs.Case', key => %s) WHERE table_name = 'case'",
                            ('{"mode": "a\\\\b"}',)).fetchone()
    assert removed == (1,)
    assert other.execute("SELECT mode FROM sec_scs.case ORDER BY case_id").fetchall() == [("a'b",), ("ok",)]
    other.close()
    c.execute("DROP SCHEMA sec_scs CASCADE")


# -------------------------------------------------------------------------------------------------
# 2. The extension's own identity and its machine code.

def test_populate_by_an_attacker_runs_nothing_as_superuser(modules, roles):
    c = roles
    c.execute("GRANT EXECUTE ON FUNCTION dj.register_module(text, bytea) TO dj_mallory")
    mallory = as_role("dj_mallory")
    mallory.execute("CREATE SCHEMA dj_mallory_lab")
    mallory.execute("SELECT dj.register_module('mallory_make', %s)", (MISBEHAVE,))
    case_pipeline(mallory, "dj_mallory_lab", rows=[(1, "ok", 1), (2, "ok", 2)])
    mallory.execute("DROP SCHEMA IF EXISTS dj_mallory_evil CASCADE")
    mallory.execute("CREATE SCHEMA dj_mallory_evil")
    # The published exploit: an = for text that makes its caller a superuser if it runs as one.
    mallory.execute("""CREATE FUNCTION dj_mallory_evil.eq(a text, b text) RETURNS bool LANGUAGE plpgsql AS $$
        BEGIN
          IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            EXECUTE 'ALTER ROLE dj_mallory SUPERUSER';
          END IF;
          RETURN pg_catalog.texteq(a, b);
        END $$""")
    mallory.execute("CREATE OPERATOR dj_mallory_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = dj_mallory_evil.eq)")
    mallory.execute("SET search_path = dj_mallory_evil, pg_catalog")
    mallory.execute("SELECT dj.set_make('dj_mallory_lab.Outcome', 'mallory_make')")
    # No compiled code cached yet: populate reads and writes it as the extension's owner.
    c.execute("DELETE FROM dj.module_artifacts")
    assert mallory.execute("SELECT * FROM dj.populate('dj_mallory_lab.Outcome')").fetchone() == (2, 0, 0)
    assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'dj_mallory'").fetchone() == (False,)
    # The machine code itself is out of her reach.
    for sql in ("SELECT count(*) FROM dj.module_artifacts",
                "UPDATE dj.module_artifacts SET artifact = ''",
                "INSERT INTO dj.module_versions VALUES (repeat('0', 64), '', now(), 'dj_mallory')",
                "UPDATE dj.modules SET sha256 = sha256",
                "DELETE FROM dj.makes"):
        with pytest.raises(errors.InsufficientPrivilege):
            mallory.execute(sql)
    mallory.close()
    c.execute("DROP SCHEMA dj_mallory_lab CASCADE")
    c.execute("DROP SCHEMA dj_mallory_evil CASCADE")
    c.execute("SELECT dj.unregister_module('mallory_make')")
    c.execute("REVOKE EXECUTE ON FUNCTION dj.register_module(text, bytea) FROM dj_mallory")


def test_forged_machine_code_is_never_loaded(modules, roles, server_log):
    c = roles
    case_pipeline(c, "sec_forge", rows=[(1, "ok", 21)])
    # Compile both, then swap their machine code (a superuser writing the table by hand, or a row
    # from another server): neither seal matches its new row.
    assert c.execute("SELECT * FROM dj.populate('sec_forge.Outcome')").fetchone() == (1, 0, 0)
    c.execute("SELECT dj.declare('sec_forge.Rate', 'computed', '-> Case\n---\nmean_rate : float64')")
    c.execute("SELECT dj.register_module('spike_rate', %s)", (SPIKE_RATE,))
    misbehave, spike = (c.execute("SELECT sha256 FROM dj.modules WHERE name = %s", (n,)).fetchone()[0]
                        for n in ("misbehave", "spike_rate"))
    c.execute("SELECT count(*) FROM dj.module_artifacts")
    with connect() as warm:  # compiles spike_rate's machine code
        warm.execute("SELECT dj.set_make('sec_forge.Rate', 'spike_rate')")
        with pytest.raises(psycopg.Error):
            warm.execute("SELECT * FROM dj.populate('sec_forge.Rate')")  # wrong upstream: fails, code cached
    assert c.execute("SELECT count(*) FROM dj.module_artifacts WHERE sha256 = ANY (%s)", ([misbehave, spike],)).fetchone()[0] == 2
    c.execute("""UPDATE dj.module_artifacts a SET artifact = b.artifact, seal = b.seal
                   FROM dj.module_artifacts b WHERE a.sha256 = %s AND b.sha256 = %s""", (misbehave, spike))
    c.execute("DELETE FROM sec_forge.__outcome")
    fresh = connect()  # a backend that has nothing cached
    assert fresh.execute("SELECT * FROM dj.populate('sec_forge.Outcome')").fetchone() == (1, 0, 0)
    assert fresh.execute("SELECT value FROM sec_forge.__outcome").fetchone() == (42,)
    # The forged row was replaced by code compiled from the module's own bytes.
    same = c.execute("""SELECT a.artifact = b.artifact FROM dj.module_artifacts a, dj.module_artifacts b
                         WHERE a.sha256 = %s AND b.sha256 = %s""", (misbehave, spike)).fetchone()[0]
    assert same is False
    fresh.close()
    c.execute("DROP SCHEMA sec_forge CASCADE")


# -------------------------------------------------------------------------------------------------
# 3. Registration: who, how big, how long, how much memory.

def heavy_component(functions: int) -> bytes:
    funcs = "(func (param i32) (result i32) local.get 0 i32.const 7 i32.add)" * functions
    return f"(component (core module {funcs}))".encode()


def test_register_module_is_granted_capped_and_cancellable(modules, roles):
    c = roles
    bob = as_role("dj_bob")
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function register_module"):
        bob.execute("SELECT dj.register_module('bobs', %s)", (MISBEHAVE,))
    with pytest.raises(errors.InsufficientPrivilege):
        bob.execute("SET dj.max_module_size = '1GB'")
    with pytest.raises(errors.InsufficientPrivilege):
        bob.execute("SET dj.module_compile_memory = '64GB'")
    c.execute("GRANT EXECUTE ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) TO dj_bob")
    assert len(bob.execute("SELECT dj.register_module('bobs', %s)", (MISBEHAVE,)).fetchone()[0]) == 64
    # Size cap, before anything compiles.
    c.execute("ALTER ROLE dj_bob SET dj.max_module_size = '64kB'")
    capped = as_role("dj_bob")
    with pytest.raises(errors.ProgramLimitExceeded, match="dj.max_module_size allows 65536") as e:
        capped.execute("SELECT dj.register_module('bobs', %s)", (MISBEHAVE,))
    assert e.value.diag.message_hint
    capped.close()
    c.execute("ALTER ROLE dj_bob RESET dj.max_module_size")
    # A compile bomb: statement_timeout ends it at once, and the backend's memory does not grow.
    bomb = heavy_component(150_000)
    pid = bob.info.backend_pid
    before = vm(pid, "VmHWM")
    bob.execute("SET statement_timeout = '1s'")
    started = time.monotonic()
    with pytest.raises(errors.QueryCanceled, match="statement timeout"):
        bob.execute("SELECT dj.register_module('bomb', %s)", (bomb,))
    took = time.monotonic() - started
    assert took < 3, took
    # The backend holds the argument (twice, as the message and as the value), not the compiler's
    # working memory (about 1 GB for this component when it compiled in the backend).
    grew = vm(pid, "VmHWM") - before
    assert grew < 2 * len(bomb) + (64 << 20), (grew, len(bomb))
    bob.execute("RESET statement_timeout")
    # The compiler's memory has a cap too.
    c.execute("ALTER ROLE dj_bob SET dj.module_compile_memory = '64MB'")
    small = as_role("dj_bob")
    with pytest.raises(errors.OutOfMemory, match="compiling the module needed more than 67108864 bytes") as e:
        small.execute("SELECT dj.register_module('bomb', %s)", (bomb,))
    assert "dj.module_compile_memory" in e.value.diag.message_hint
    assert small.execute("SELECT 1").fetchone() == (1,)
    small.close()
    c.execute("ALTER ROLE dj_bob RESET dj.module_compile_memory")
    assert c.execute("SELECT count(*) FROM dj.modules WHERE name = 'bomb'").fetchone() == (0,)
    bob.execute("SELECT dj.unregister_module('bobs')")
    bob.close()
    c.execute("REVOKE EXECUTE ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) FROM dj_bob")


# -------------------------------------------------------------------------------------------------
# 4. What a guest makes the host do.

def test_a_huge_ancestor_fetch_stays_within_the_memory_limit(modules, roles, server_log):
    c = roles
    c.execute("DROP SCHEMA IF EXISTS sec_bulk CASCADE")
    c.execute("SELECT dj.declare('sec_bulk.Bulk', 'lookup', 'bulk_id : int32\n---\npayload : varchar(200)')")
    c.execute("INSERT INTO sec_bulk.\"#bulk\" SELECT i, repeat('x', 100) || i FROM generate_series(1, 500000) i")
    c.execute("SELECT dj.declare('sec_bulk.Case', 'manual', "
              "'case_id : int32\n---\n-> [nullable] Bulk\nmode : varchar(16)\nn : int64')")
    c.execute("SELECT dj.declare('sec_bulk.Outcome', 'computed', '-> Case\n---\nvalue : int64')")
    c.execute("SELECT dj.set_make('sec_bulk.Outcome', 'misbehave')")
    c.execute("INSERT INTO sec_bulk.case VALUES (1, NULL, 'fetch-all', 0), (2, NULL, 'ok', 1)")
    guest = connect()
    pid = guest.info.backend_pid
    guest.execute("SET dj.make_memory_limit = '16MB'")
    # Warm: the table's pages in shared buffers, the engine made, the host's code paged in (all
    # count in the backend's RSS, none is memory the fetch takes).
    guest.execute("SELECT count(*) FROM sec_bulk.\"#bulk\"")
    assert guest.execute("SELECT * FROM dj.populate('sec_bulk.Outcome', 'case_id = 2')").fetchone() == (1, 0, 0)
    before = vm(pid, "VmHWM")
    with pytest.raises(errors.OutOfMemory, match="fetched more than its memory limit allows") as e:
        guest.execute("SELECT * FROM dj.populate('sec_bulk.Outcome')")
    assert e.value.sqlstate == "53200"
    assert "dj.make_memory_limit" in e.value.diag.message_hint
    grew = vm(pid, "VmHWM") - before
    # 500 000 rows are ~60 MB as values (the host materialized them all, 412 MB of peak RSS, before
    # this was fixed); now the host copies at most the 16 MB the guest may hold.
    assert grew < 32 << 20, grew
    # With room for them, the same make reads every row (through a cursor, a batch at a time).
    guest.execute("SET dj.make_memory_limit = '1GB'")
    assert guest.execute("SELECT * FROM dj.populate('sec_bulk.Outcome')").fetchone() == (1, 0, 0)
    assert guest.execute("SELECT value FROM sec_bulk.__outcome WHERE case_id = 1").fetchone() == (500000,)
    # The instance pool reserves address space by the memory limit, not 4 GiB per slot.
    assert vm(pid, "VmPeak") < 40 << 30, vm(pid, "VmPeak")
    guest.close()
    c.execute("DROP SCHEMA sec_bulk CASCADE")


@pytest.mark.parametrize(
    "mode, value_type, sqlstate, message",
    [
        ("bad-date", "date", "22008", "out of range for attribute value (date)"),
        ("bad-time", "time", "22008", "out of range for attribute value (time without time zone)"),
        ("bad-timestamp", "datetime", "22008", "out of range for attribute value (timestamp without time zone)"),
        ("nul-text", "varchar(16)", "22021", "contains a NUL character"),
        ("nul-restriction", "int64", "22021", "query contains a NUL character"),
    ],
)
def test_guest_values_postgres_cannot_read_back_fail_the_key(modules, roles, mode, value_type, sqlstate, message):
    c = roles
    case_pipeline(c, "sec_values", value_type, rows=[(1, mode, 0)])
    with pytest.raises(psycopg.Error, match=re.escape(message)) as e:
        c.execute("SELECT * FROM dj.populate('sec_values.Outcome')")
    assert e.value.sqlstate == sqlstate
    assert e.value.diag.message_hint
    assert c.execute("SELECT * FROM dj.populate('sec_values.Outcome', suppress_errors => true)").fetchone() == (0, 1, 1)
    assert c.execute("SELECT count(*) FROM sec_values.__outcome").fetchone() == (0,)
    c.execute("DROP SCHEMA sec_values CASCADE")


def test_infinite_timestamps_round_trip_and_the_schema_dumps(modules, roles):
    c = roles
    case_pipeline(c, "sec_inf", "datetime", rows=[(1, "infinity", 0)])
    assert c.execute("SELECT * FROM dj.populate('sec_inf.Outcome')").fetchone() == (1, 0, 0)
    assert c.execute("SELECT value::text FROM sec_inf.__outcome").fetchone() == ("infinity",)
    out = subprocess.run([f"{PG_BIN}/pg_dump", "-h", os.environ["PGHOST"], "-p", os.environ["PGPORT"], "-U",
                          "postgres", "-n", "sec_inf", c.info.dbname], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    c.execute("DROP SCHEMA sec_inf CASCADE")


# -------------------------------------------------------------------------------------------------
# 5. The tier guard.

def test_every_way_to_make_a_tier_table_in_an_enforcing_schema_is_guarded(modules, roles):
    c = roles
    alice = as_role("dj_alice")
    alice.execute("SELECT dj.declare('dj_alice_lab.Subject', 'manual', 'subject_id : int32')")
    alice.execute("CREATE SCHEMA dj_alice_other")
    assert alice.execute("SELECT dj.enforce_tiers('dj_alice_lab')").fetchone() == (0,)
    refused = errors.InsufficientPrivilege
    # CREATE TABLE AS / SELECT INTO with rows: those rows are direct writes.
    with pytest.raises(refused, match="CREATE TABLE AS cannot fill"):
        alice.execute("CREATE TABLE dj_alice_lab.__stat AS SELECT 1 AS subject_id")
    with pytest.raises(refused, match="SELECT INTO cannot fill"):
        alice.execute("SELECT 1 AS subject_id INTO dj_alice_lab.__stat")
    alice.execute("CREATE TABLE dj_alice_lab.__stat AS SELECT 1 AS subject_id WITH NO DATA")
    alice.execute("CREATE TABLE dj_alice_lab.plain (id int)")
    alice.execute("ALTER TABLE dj_alice_lab.plain RENAME TO _imported")
    alice.execute("CREATE TABLE dj_alice_other.__moved (id int)")
    alice.execute("ALTER TABLE dj_alice_other.__moved SET SCHEMA dj_alice_lab")
    for table in ("__stat", "_imported", "__moved"):
        with pytest.raises(refused, match="the schema enforces DataJoint tiers"):
            alice.execute(f"INSERT INTO dj_alice_lab.{table} VALUES (1)")
    # Other ALTER TABLE commands leave a table alone (a dump's restore runs them).
    alice.execute("ALTER TABLE dj_alice_lab.subject ADD COLUMN note text")
    alice.execute("INSERT INTO dj_alice_lab.subject VALUES (1, 'fine')")
    alice.close()


# -------------------------------------------------------------------------------------------------
# 6. A table runs exactly the code its owner chose.

def test_a_table_runs_exactly_the_code_its_owner_bound(modules, roles):
    c = roles
    c.execute("GRANT EXECUTE ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) TO dj_bob")
    bob = as_role("dj_bob")
    # Two builds of the same code (a custom section apart): two versions, no other name holds them.
    first, second = MISBEHAVE + b"\x00\x04\x03one", MISBEHAVE + b"\x00\x04\x03two"
    bob.execute("SELECT dj.register_module('shared', %s)", (first,))
    alice = as_role("dj_alice")
    case_pipeline(alice, "dj_alice_bound", rows=[(1, "ok", 1)])
    alice.execute("SELECT dj.set_make('dj_alice_bound.Outcome', 'shared')")
    v1 = alice.execute("SELECT sha256 FROM dj.makes WHERE schema_name = 'dj_alice_bound'").fetchone()[0]
    # Bob puts other code under the name, and tries to rewrite Alice's binding or rename his module.
    v2 = bob.execute("SELECT dj.register_module('shared', %s)", (second,)).fetchone()[0]
    assert v2 != v1
    for sql in ("UPDATE dj.modules SET name = 'renamed' WHERE name = 'shared'",
                "UPDATE dj.makes SET sha256 = sha256",
                "DELETE FROM dj.module_versions"):
        with pytest.raises(errors.InsufficientPrivilege):
            bob.execute(sql)
    assert alice.execute("SELECT * FROM dj.populate('dj_alice_bound.Outcome')").fetchone() == (1, 0, 0)
    assert alice.execute("SELECT _job_version FROM dj_alice_bound.__outcome").fetchone() == (v1,)
    assert alice.execute("SELECT count(*) FROM dj.stale('dj_alice_bound.Outcome')").fetchone() == (0,)
    # Even unregistered, the version Alice bound stays (and runs).
    assert bob.execute("SELECT dj.unregister_module('shared')").fetchone() == (True,)
    assert c.execute("SELECT count(*) FROM dj.module_versions WHERE sha256 = %s", (v1,)).fetchone() == (1,)
    assert c.execute("SELECT count(*) FROM dj.module_versions WHERE sha256 = %s", (v2,)).fetchone() == (0,)
    alice.execute("INSERT INTO dj_alice_bound.case VALUES (2, 'ok', 2)")
    assert alice.execute("SELECT * FROM dj.populate('dj_alice_bound.Outcome')").fetchone() == (1, 0, 0)
    # Only Alice's own binding moves her table to new code; then its old rows are stale.
    bob.execute("SELECT dj.register_module('shared', %s)", (second,))
    alice.execute("SELECT dj.set_make('dj_alice_bound.Outcome', 'shared')")
    assert alice.execute("SELECT count(*) FROM dj.stale('dj_alice_bound.Outcome')").fetchone() == (2,)
    assert c.execute("SELECT count(*) FROM dj.module_versions WHERE sha256 = %s", (v1,)).fetchone() == (0,)
    alice.close()
    bob.execute("SELECT dj.unregister_module('shared')")
    bob.close()
    c.execute("REVOKE EXECUTE ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) FROM dj_bob")


# -------------------------------------------------------------------------------------------------
# 7. Concurrent populates of one table.

@pytest.mark.parametrize("sessions, jobs_table", [(2, True), (3, True), (2, False), (3, False)],
                         ids=["2", "3", "2-creating-jobs-table", "3-creating-jobs-table"])
def test_concurrent_populates_divide_the_keys(modules, roles, server_log, sessions, jobs_table):
    c = roles
    keys = 3000
    rows = [(i, "err" if i % 10 == 0 else "ok", i) for i in range(1, keys + 1)]
    c.execute("DROP SCHEMA IF EXISTS sec_conc CASCADE")
    case_pipeline(c, "sec_conc")
    with c.cursor() as cur:
        cur.executemany("INSERT INTO sec_conc.case VALUES (%s, %s, %s)", rows)
    if not jobs_table:
        # A table declared before 0.2 has none: the first failing keys make the sessions create it.
        c.execute('DROP TABLE sec_conc."~~outcome"')
    conns = [connect() for _ in range(sessions)]
    barrier = threading.Barrier(sessions)
    results = [None] * sessions

    def run(i):
        barrier.wait()
        try:
            results[i] = conns[i].execute(
                "SELECT * FROM dj.populate('sec_conc.Outcome', suppress_errors => true)").fetchone()
        except psycopg.Error as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors_seen = [r for r in results if isinstance(r, Exception)]
    assert not errors_seen, errors_seen  # no duplicate key, no deadlock, no clash creating the jobs table
    failing = keys // 10
    # Every good key made exactly once, by one of the sessions.
    assert sum(r[0] for r in results) == keys - failing, results
    assert c.execute("SELECT count(*) FROM sec_conc.__outcome").fetchone() == (keys - failing,)
    assert c.execute("SELECT count(*), count(DISTINCT case_id) FROM sec_conc.\"~~outcome\" WHERE status = 'error'"
                     ).fetchone() == (failing, failing)
    if jobs_table:
        # Each failing key tried by one session.
        assert sum(r[1] for r in results) == failing, results
    else:
        # The session that creates the jobs table holds its lock to the end; the others wait for it
        # at their first failure, and may then retry keys it failed (as a later populate would).
        assert failing <= sum(r[1] for r in results) <= sessions * failing, results
    assert c.execute("SELECT * FROM dj.populate('sec_conc.Outcome', suppress_errors => true)").fetchone() \
        == (0, failing, failing)
    for conn in conns:
        conn.close()
    c.execute("DROP SCHEMA sec_conc CASCADE")


def test_a_populate_nested_in_a_make_creates_its_jobs_table_once(modules, roles, server_log):
    c = roles
    c.execute("DROP SCHEMA IF EXISTS sec_nest CASCADE")
    case_pipeline(c, "sec_nest", rows=[(1, "ok", 1), (2, "ok", 2)])
    c.execute("SELECT dj.declare('sec_nest.Other', 'manual', 'case_id : int32\n---\nmode : varchar(16)\nn : int64')")
    c.execute("SELECT dj.declare('sec_nest.Result', 'computed', '-> Other\n---\nvalue : int64')")
    c.execute("SELECT dj.set_make('sec_nest.Result', 'misbehave')")
    c.execute("INSERT INTO sec_nest.other VALUES (1, 'err', 1), (2, 'err', 2)")
    c.execute('DROP TABLE sec_nest."~~result"')
    # Misbehave reads `Case`, which is no ancestor of Result: Result's keys fail (42501), and the
    # nested populate records them, creating Result's jobs table inside Outcome's populate.
    c.execute("""CREATE FUNCTION sec_nest.populate_other() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM * FROM dj.populate('sec_nest.Result', suppress_errors => true); RETURN NULL; END $$""")
    c.execute("CREATE TRIGGER nested AFTER INSERT ON sec_nest.__outcome FOR EACH STATEMENT "
              "EXECUTE FUNCTION sec_nest.populate_other()")
    assert c.execute("SELECT * FROM dj.populate('sec_nest.Outcome', suppress_errors => true)").fetchone() == (2, 0, 0)
    assert c.execute("SELECT count(*) FROM sec_nest.\"~~result\" WHERE status = 'error'").fetchone() == (2,)
    c.execute("DROP SCHEMA sec_nest CASCADE")
