"""The dependency graph is cached per backend: DDL in another session must show at once."""
from conftest import connect


def test_graph_cache_sees_other_sessions_ddl():
    a, b = connect(), connect()
    try:
        for c in (a, b):
            c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
        a.execute("DROP SCHEMA IF EXISTS cache_probe CASCADE")
        a.execute("SELECT dj.declare('cache_probe.Root', 'manual', 'root_id : int32')")
        # b builds and caches the graph.
        assert b.execute("SELECT count(*) FROM dj.children('cache_probe.Root')").fetchone()[0] == 0
        # a declares a child and a table without references.
        a.execute("SELECT dj.declare('cache_probe.Leaf', 'computed', '-> Root')")
        a.execute("SELECT dj.declare('cache_probe.Lonely', 'lookup', 'x : int16')")
        assert b.execute("SELECT class_name FROM dj.children('cache_probe.Root')").fetchall() == [("Leaf",)]
        order = b.execute("SELECT class_name FROM dj.topological_order('cache_probe')").fetchall()
        assert sorted(order) == [("Leaf",), ("Lonely",), ("Root",)]
        # A schema rename (no relation changes) is noticed too.
        a.execute("ALTER SCHEMA cache_probe RENAME TO cache_probe2")
        assert b.execute("SELECT class_name FROM dj.children('cache_probe2.Root')").fetchall() == [("Leaf",)]
        a.execute("ALTER SCHEMA cache_probe2 RENAME TO cache_probe")
        assert b.execute("SELECT class_name FROM dj.children('cache_probe.Root')").fetchall() == [("Leaf",)]
        # Dropping the schema elsewhere empties it here too.
        a.execute("DROP SCHEMA cache_probe CASCADE")
        assert b.execute("SELECT count(*) FROM dj.topological_order('cache_probe')").fetchone()[0] == 0
    finally:
        a.close()
        b.close()
