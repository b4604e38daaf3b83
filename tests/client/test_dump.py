"""A pipeline survives pg_dump and restore: tables, definitions, lineage, data, tier enforcement and
make functions (dj.schema_settings, dj.modules and dj.makes are dumped with the extension's
configuration; the compiled machine code is not, and is rebuilt on first use)."""
import os
import subprocess

import psycopg
import pytest

from conftest import REPO, connect

PG_BIN = "/usr/lib/postgresql/15/bin"
SCHEMA = "dumped"


def run(*args):
    subprocess.run(args, check=True, capture_output=True, text=True)


def describe_all(c):
    rows = c.execute("SELECT class_name FROM dj.topological_order(%s)", (SCHEMA,)).fetchall()
    return {name: c.execute("SELECT dj.describe(%s)", (f"{SCHEMA}.{name}",)).fetchone()[0] for (name,) in rows}


def test_pg_dump_round_trip():
    src = connect()
    src.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    src.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    src.execute("DELETE FROM dj.schema_settings WHERE schema_name = %s", (SCHEMA,))
    src.execute("DELETE FROM dj.makes WHERE schema_name = %s", (SCHEMA,))
    src.execute("DELETE FROM dj.modules WHERE name = 'dumped_misbehave'")
    src.execute(f"SELECT dj.declare('{SCHEMA}.Subject', 'manual', E'subject_id : int32\\n---\\nsex : enum(''M'', ''F'')')")
    src.execute(f"SELECT dj.declare('{SCHEMA}.Stat', 'computed', E'-> Subject\\n---\\nv = 0.5 : float32')")
    src.execute(f"SELECT dj.declare('{SCHEMA}.Stat.Item', 'part', E'-> master\\ni : int16')")
    src.execute(f"INSERT INTO {SCHEMA}.subject VALUES (1, 'M'), (2, 'F')")
    src.execute(f"INSERT INTO {SCHEMA}.__stat VALUES (1, 0.25)")
    src.execute(f"SELECT dj.declare('{SCHEMA}.Case', 'manual', E'case_id : int32\\n---\\nmode : varchar(16)\\nn : int64')")
    src.execute(f"SELECT dj.declare('{SCHEMA}.Outcome', 'computed', E'-> Case\\n---\\nvalue : int64')")
    src.execute(f"INSERT INTO {SCHEMA}.case VALUES (1, 'ok', 21)")
    misbehave = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()
    src.execute("SELECT dj.register_module('dumped_misbehave', %s)", (misbehave,))
    src.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'dumped_misbehave')")
    src.execute("SELECT dj.enforce_tiers(%s)", (SCHEMA,))
    before = describe_all(src)
    lineage = src.execute(f'SELECT * FROM {SCHEMA}."~lineage" ORDER BY 1, 2').fetchall()

    target = "dj_restore"
    src.execute(f"DROP DATABASE IF EXISTS {target}")
    src.execute(f"CREATE DATABASE {target}")
    dump = "/tmp/dj_dump.sql"
    common = ["-h", os.environ["PGHOST"], "-p", os.environ["PGPORT"], "-U", "postgres"]
    # The extension (with its configuration rows), its schema dj, and the pipeline's schema, as the
    # README says to dump a part of a database.
    run(f"{PG_BIN}/pg_dump", *common, "-d", os.environ.get("PGDATABASE", "datajoint"), "--extension=datajoint",
        "-n", "dj", "-n", SCHEMA, "-f", dump)
    run(f"{PG_BIN}/psql", *common, "-d", target, "-v", "ON_ERROR_STOP=1", "-q", "-f", dump)

    dst = psycopg.connect(host=os.environ["PGHOST"], port=os.environ["PGPORT"], user="postgres", dbname=target,
                          autocommit=True)
    try:
        assert describe_all(dst) == before
        assert dst.execute(f'SELECT * FROM {SCHEMA}."~lineage" ORDER BY 1, 2').fetchall() == lineage
        assert dst.execute(f"SELECT subject_id, v FROM {SCHEMA}.__stat").fetchall() == [(1, 0.25)]
        assert dst.execute("SELECT enforce_tiers FROM dj.schema_settings WHERE schema_name = %s", (SCHEMA,)).fetchone() == (True,)
        # Enforcement still holds after the restore.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dst.execute(f"INSERT INTO {SCHEMA}.__stat VALUES (2, 1)")
        assert dst.execute(f"SELECT count(*) FROM dj.delete('{SCHEMA}.Subject', 'subject_id = 1')").fetchone()[0] == 3
        # The make function came along; its machine code is compiled again on first use.
        assert dst.execute("SELECT count(*) FROM dj.module_artifacts").fetchone()[0] == 0
        assert dst.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome')").fetchone() == (1, 0, 0)
        assert dst.execute(f"SELECT value FROM {SCHEMA}.__outcome").fetchall() == [(42,)]
        assert dst.execute("SELECT count(*) FROM dj.module_artifacts").fetchone()[0] == 1
    finally:
        dst.close()
        src.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        src.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        src.execute("DELETE FROM dj.schema_settings WHERE schema_name = %s", (SCHEMA,))
        src.execute("DELETE FROM dj.makes WHERE schema_name = %s", (SCHEMA,))
        src.execute("DELETE FROM dj.modules WHERE name = 'dumped_misbehave'")
        src.close()
