"""What clients read: exact values through every function that returns them, typed rows for pandas
and SQLAlchemy, the documented BI queries (parsed by sqlglot as Superset does, and run with the
search_path a BI tool sets), and datajoint-python next to the extension."""
import math
import os
import random
import re
import struct
import subprocess
import sys

import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa
import sqlglot
from psycopg import errors

from conftest import REPO, connect

SCHEMA = "client_bi"
MISBEHAVE = (REPO / "udfs" / "components" / "misbehave.wasm").read_bytes()


def random_doubles(n: int) -> list[float]:
    rng = random.Random(20261202)
    out = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308,
           216927687956430.38, 0.1, 1 / 3, math.nan, math.inf, -math.inf]
    while len(out) < n:
        # Every bit pattern of a finite double is as likely as any other.
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            out.append(x)
    return out


@pytest.fixture(scope="module")
def pipeline():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute(f"""SELECT dj.declare('{SCHEMA}.Case', 'manual',
                  'case_id : int32  # the case\n---\nmode : varchar(16)\nn : int64')""")
    c.execute(f"""SELECT dj.declare('{SCHEMA}.Source', 'manual',
                  '-> Case\n---\nx : float64  # a double\nd : decimal(30,12)\ne : decimal(10,3)\nt : datetime(6)\nu : uuid')""")
    c.execute(f"""SELECT dj.declare('{SCHEMA}.Outcome', 'computed',
                  '-> Source\n---\nx : float64\nd : decimal(30,12)\ne : decimal(10,3)\nt : datetime(6)\nu : uuid')""")
    c.execute("SELECT dj.register_module('misbehave', %s)", (MISBEHAVE,))
    c.execute(f"SELECT dj.set_make('{SCHEMA}.Outcome', 'misbehave')")
    rng = random.Random(7)
    doubles = random_doubles(20_003)
    with c.cursor() as cur:
        cur.executemany(f"INSERT INTO {SCHEMA}.case VALUES (%s, 'copy', 0)", [(i,) for i in range(len(doubles))])
        rows = []
        for i, x in enumerate(doubles):
            d = f"{rng.randrange(-10**18, 10**18)}.{rng.randrange(10**12):012d}"
            e = f"{rng.randrange(-10**7, 10**7)}.{rng.randrange(1000):03d}"
            t = ["2024-01-31 12:34:56.789012", "infinity", "-infinity", "1970-01-01", "4713-11-24 00:00:00 BC",
                 "292276-12-31 23:59:59.999999"][i % 6]
            u = "%032x" % rng.getrandbits(128)
            rows.append((i, x, d, e, t, u))
        cur.executemany(f"INSERT INTO {SCHEMA}.source VALUES (%s, %s, %s, %s, %s, %s)", rows)
    yield c
    c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    c.execute("DELETE FROM dj.makes")
    c.close()


EXACT = f"""SELECT count(*) FILTER (WHERE f IS DISTINCT FROM to_jsonb(s)), count(*)
              FROM {SCHEMA}.source s LEFT JOIN LATERAL ({{}}) AS r(f) ON (r.f->>'case_id')::int = s.case_id"""


def test_every_function_that_returns_rows_returns_them_exactly(pipeline):
    c = pipeline
    for reader in (f"SELECT * FROM dj.fetch(dj.rel('{SCHEMA}.Source'))",
                   f"SELECT * FROM dj.fetch_json(dj.rel('{SCHEMA}.Source'))",
                   f"SELECT dj.fetch1(dj.rel('{SCHEMA}.Source') & jsonb_build_object('case_id', s.case_id))"):
        assert c.execute(EXACT.format(reader)).fetchone() == (0, 20_003), reader
    # Keys come back exactly too (key_source, stale).
    keys = c.execute(f"SELECT k FROM dj.key_source('{SCHEMA}.Outcome') AS k ORDER BY (k->>'case_id')::int").fetchall()
    assert [k[0]["case_id"] for k in keys] == list(range(20_003))


def test_values_through_a_make_function_are_exact(pipeline):
    c = pipeline
    assert c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome')").fetchone() == (20_003, 0, 0)
    different = c.execute(f"""SELECT count(*) FROM {SCHEMA}.source s JOIN {SCHEMA}.__outcome o USING (case_id)
                              WHERE (s.x, s.d, s.e, s.t, s.u) IS DISTINCT FROM (o.x, o.d, o.e, o.t, o.u)
                                 OR s.d::text <> o.d::text OR s.e::text <> o.e::text""").fetchone()[0]
    assert different == 0
    # PostgreSQL's last two millennia of timestamps are beyond what the contract carries: refused,
    # not rounded to infinity.
    c.execute(f"INSERT INTO {SCHEMA}.case VALUES (-1, 'copy', 0)")
    c.execute(f"INSERT INTO {SCHEMA}.source VALUES (-1, 0, 0, 0, '294276-12-31 23:59:59.999999', %s)",
              ("0" * 32,))
    with pytest.raises(errors.DatetimeFieldOverflow, match="beyond what a make function can receive"):
        c.execute(f"SELECT * FROM dj.populate('{SCHEMA}.Outcome')")
    c.execute(f"DELETE FROM {SCHEMA}.source WHERE case_id = -1")
    c.execute(f"DELETE FROM {SCHEMA}.case WHERE case_id = -1")
    # Rows made by another version show in dj.stale, exactly keyed.
    c.execute(f"UPDATE {SCHEMA}.__outcome SET _job_version = 'other' WHERE case_id < 3")
    assert [r[0] for r in c.execute(f"SELECT * FROM dj.stale('{SCHEMA}.Outcome')").fetchall()] == \
        [{"case_id": 0}, {"case_id": 1}, {"case_id": 2}]


@pytest.fixture
def engine():
    url = sa.engine.URL.create("postgresql+psycopg", username="postgres", host=os.environ["PGHOST"],
                               port=int(os.environ["PGPORT"]), database=os.environ.get("PGDATABASE", "datajoint"))
    e = sa.create_engine(url)
    yield e
    e.dispose()


def test_sqlalchemy_reflects_the_pipeline(pipeline, engine):
    inspector = sa.inspect(engine)
    assert {"case", "source", "__outcome", "~~outcome"} <= set(inspector.get_table_names(schema=SCHEMA))
    columns = {c["name"]: c for c in inspector.get_columns("source", schema=SCHEMA)}
    assert isinstance(columns["x"]["type"], sa.Double) or str(columns["x"]["type"]) == "DOUBLE PRECISION"
    assert str(columns["d"]["type"]) == "NUMERIC(30, 12)"
    assert columns["x"]["comment"] == ":float64:a double"
    assert inspector.get_pk_constraint("__outcome", schema=SCHEMA)["constrained_columns"] == ["case_id"]
    fks = inspector.get_foreign_keys("__outcome", schema=SCHEMA)
    assert [(fk["referred_table"], fk["constrained_columns"]) for fk in fks] == [("source", ["case_id"])]
    # The pipeline views reflect as tables would.
    views = set(inspector.get_view_names(schema="dj"))
    assert {"pipeline_tables", "pipeline_columns"} <= views
    types = {c["name"]: str(c["type"]) for c in inspector.get_columns("pipeline_tables", schema="dj")}
    assert types["rows"] == "BIGINT" and types["last_populated"] == "TIMESTAMP"


def test_pandas_reads_typed_rows(pipeline, engine):
    with engine.connect() as conn:
        # (Rows whose timestamps Python's datetime can hold: not ±infinity, not BC.)
        conn.exec_driver_sql(
            "SELECT dj.temp_view(dj.rel('client_bi.Source') & 'case_id < 600 AND case_id %% 6 = 0', 'src')")
        frame = pd.read_sql("SELECT * FROM src ORDER BY case_id", conn)
        assert str(frame["x"].dtype) == "float64"
        assert str(frame["case_id"].dtype) in ("int32", "int64")
        assert str(frame["t"].dtype).startswith("datetime64")
        assert len(frame) == 100
        # A float64 that happens to be whole stays a float (jsonb made it an integer).
        typed = pd.read_sql(
            "SELECT * FROM dj.query(dj.rel('client_bi.Source') & 'case_id = 0', 'KEY') AS "
            "t(case_id int4, x float8, d numeric, e numeric, t timestamp, u uuid)", conn)
        assert str(typed["x"].dtype) == "float64" and typed["x"][0] == 0.0
        tables = pd.read_sql("SELECT * FROM dj.pipeline_tables WHERE schema_name = 'client_bi' ORDER BY table_name",
                             conn)
        assert list(tables["class_name"]) == ["Outcome", "Case", "Source"]
        assert str(tables["rows"].dtype) == "int64"
        columns = pd.read_sql("SELECT * FROM dj.pipeline_columns WHERE schema_name = 'client_bi'", conn)
        assert set(columns.loc[columns["attribute"] == "x", "comment"]) == {"a double", ""}


# Queries the README documents for BI tools: each must parse as Superset parses it (sqlglot,
# PostgreSQL dialect) and run with the search_path set to the pipeline's schema only.
BI_QUERIES = [
    "SELECT * FROM dj.pipeline_tables",
    "SELECT * FROM dj.pipeline_columns WHERE schema_name = 'client_bi'",
    "SELECT * FROM dj.fetch_json(dj.rel('client_bi.Source'), 'KEY', 10)",
    "SELECT f->>'case_id' AS case_id, (f->>'x')::float8 AS x FROM dj.fetch_json(dj.rel('client_bi.Source')) AS f",
    "SELECT * FROM dj.query(dj.restrict(dj.rel('client_bi.Case'), 'case_id < 10')) AS t(case_id int4, mode varchar, n int8)",
    "SELECT dj.count(dj.join(dj.rel('client_bi.Case'), dj.rel('client_bi.Source')))",
    "SELECT dj.count(dj.exclude(dj.rel('client_bi.Case'), dj.rel('client_bi.Outcome')))",
    "SELECT dj.sql(dj.restrict(dj.rel('client_bi.Source'), 'x > 0'))",
    "SELECT dj.diagram('client_bi', 'mermaid')",
]


@pytest.mark.parametrize("query", BI_QUERIES)
def test_documented_bi_queries_parse_and_run_on_a_pipeline_search_path(pipeline, query):
    sqlglot.parse_one(query, read="postgres")
    c = connect()
    c.execute(f"SET search_path = {SCHEMA}")
    assert c.execute(query).fetchall() is not None
    c.close()


def test_the_readme_documents_these_queries():
    readme = (REPO / "README.md").read_text()
    for query in BI_QUERIES:
        name = re.search(r"dj\.(\w+)", query).group(1)
        assert f"dj.{name}" in readme, name
    # And dj.fetch, which BI parsers cannot read, is not what it offers them.
    with pytest.raises(sqlglot.errors.ParseError):
        sqlglot.parse_one("SELECT * FROM dj.fetch(dj.rel('x.Y'))", read="postgres")


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    after = readme.split("datajoint-python 2.3.5 connects to the same cluster", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_readme_connection_snippet_works_as_written(pipeline):
    pipeline.execute("SELECT dj.declare('demo.Subject', 'manual', 'subject_id : int32') "
                     "WHERE to_regclass('demo.subject') IS NULL")
    snippet = readme_snippet().replace("55432", os.environ["PGPORT"])
    assert "55432" in readme_snippet()  # only the dev cluster's port differs from the test cluster's
    check = snippet + "\nassert 'Subject' in dir(lab), dir(lab)\nprint('connected')\n"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd="/tmp",
                         env={**os.environ, "PGDATABASE": os.environ.get("PGDATABASE", "datajoint")})
    assert out.returncode == 0, out.stderr
    assert "connected" in out.stdout


def test_datajoint_python_cannot_put_tables_in_the_extensions_schema(pipeline, dj_connection):
    import datajoint as dj

    # (datajoint-python reports our 42501 as its own AccessError.)
    with pytest.raises(Exception, match='schema dj belongs to the datajoint extension|Cannot declare table "dj"'):
        schema = dj.Schema("dj", connection=dj_connection)

        @schema
        class Stray(dj.Manual):
            definition = "stray_id : int32"

    assert pipeline.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'dj'::regnamespace "
                            "AND relname IN ('~lineage', 'stray')").fetchone() == (0,)
    with pytest.raises(errors.InsufficientPrivilege):
        pipeline.execute("CREATE TABLE dj.stray (id int)")
