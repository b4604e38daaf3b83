"""make test-bi: Apache Superset 6.1 (its own venv) against the pipeline in tests/bi/pipeline.sql.

It adds the cluster as a database, makes datasets of what the README offers BI tools (the view
dj.pipeline_tables, a dj.create_view view, a virtual dataset whose SQL calls dj.fetch_json and
dj.restrict), reads their columns as Superset reflects them, and runs a chart-data query on each:
the numbers must be the pipeline's. The virtual dataset's schema is the pipeline's, so Superset
sets search_path to it alone."""
import os
import sys
import tempfile

home = tempfile.mkdtemp(prefix="superset-")
config = os.path.join(home, "superset_config.py")
with open(config, "w") as f:
    f.write(f"SECRET_KEY = 'datajoint-test-bi-{os.getpid()}'\n"
            f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{home}/superset.db'\n"
            "FEATURE_FLAGS = {}\nWTF_CSRF_ENABLED = False\n"
            # In-process caches (the metastore cache's factory does not take what flask-caching passes).
            + "".join(f"{name} = {{'CACHE_TYPE': 'SimpleCache'}}\n" for name in (
                "CACHE_CONFIG", "DATA_CACHE_CONFIG", "FILTER_STATE_CACHE_CONFIG", "EXPLORE_FORM_DATA_CACHE_CONFIG")))
os.environ["SUPERSET_CONFIG_PATH"] = config
os.environ["SUPERSET_HOME"] = home

from flask_migrate import upgrade  # noqa: E402

from superset.app import create_app  # noqa: E402

app = create_app()
uri = f"postgresql+psycopg2://postgres@127.0.0.1:{os.environ['PGPORT']}/{os.environ.get('PGDATABASE', 'datajoint')}"
passed, failures = [], []


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    (passed if ok else failures).append(what)


with app.app_context():
    upgrade()  # Superset's metadata database
    from superset import db
    from superset.connectors.sqla.models import SqlaTable
    from superset.models.core import Database

    database = Database(database_name="datajoint", sqlalchemy_uri=uri, expose_in_sqllab=True)
    db.session.add(database)
    db.session.commit()
    check("the pipeline schemas are listed", {"dj", "bi_demo"} <= set(database.get_all_schema_names()))

    def dataset(table_name, schema, sql=None):
        table = SqlaTable(table_name=table_name, schema=schema, database=database, sql=sql)
        db.session.add(table)
        db.session.commit()
        table.fetch_metadata()
        return table

    def chart(table, groupby, metric_sql):
        query = {
            "granularity": None, "from_dttm": None, "to_dttm": None, "is_timeseries": False,
            "groupby": groupby, "columns": groupby,
            "metrics": [{"expressionType": "SQL", "sqlExpression": metric_sql, "label": "value"}],
            "filter": [], "extras": {}, "row_limit": 100, "orderby": [],
        }
        result = table.query(query)
        if result.status != "success":
            raise RuntimeError(result.error_message)
        return result.df

    tables = dataset("pipeline_tables", "dj")
    types = {c.column_name: str(c.type) for c in tables.columns}
    check("dj.pipeline_tables reflects typed columns",
          types.get("rows", "").upper() == "BIGINT" and "TIMESTAMP" in types.get("last_populated", "").upper(), types)
    df = chart(tables, ["tier"], "SUM(rows)")
    by_tier = {r["tier"]: r["value"] for r in df.to_dict("records")}
    check("chart: rows per tier from dj.pipeline_tables", by_tier.get("manual", 0) >= 7 and
          by_tier.get("computed", 0) >= 3, by_tier)

    activity = dataset("activity", "bi_demo")
    columns = {c.column_name: c for c in activity.columns}
    check("a dj.create_view view reflects its columns", {"subject_id", "session", "mean_rate", "species"}
          <= set(columns), list(columns))
    df = chart(activity, ["species"], "AVG(mean_rate)")
    means = {r["species"]: r["value"] for r in df.to_dict("records")}
    check("chart: AVG(mean_rate) by species", means == {"mouse": (2.5 + 3.5 + 37.0) / 3}, means)

    virtual = dataset("long_sessions", "bi_demo", sql=(
        "SELECT (f->>'subject_id')::int AS subject_id, (f->>'duration')::float8 AS duration "
        "FROM dj.fetch_json(dj.restrict(dj.rel('bi_demo.Session'), 'duration > 20')) AS f"))
    df = chart(virtual, ["subject_id"], "SUM(duration)")
    sums = {r["subject_id"]: r["value"] for r in df.to_dict("records")}
    check("chart on a virtual dataset calling dj.fetch_json and dj.restrict, search_path = bi_demo",
          sums == {1: 75.0, 2: 37.0}, sums)

    path = dataset("search_path", "bi_demo", sql="SELECT current_setting('search_path') AS search_path")
    df = chart(path, ["search_path"], "COUNT(*)")
    seen = [r["search_path"] for r in df.to_dict("records")]
    check("Superset ran those with search_path set to the dataset's schema alone", seen in (["bi_demo"], ['"bi_demo"']),
          seen)

print(f"test-bi: {len(passed)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
