"""Without shared_preload_libraries the extension still loads, with a WARNING that says how to fix it."""
import os
import shlex
import subprocess

import psycopg
import pytest

from conftest import REPO, cluster_log

CLUSTER = [str(REPO / "scripts" / "cluster.sh"), "--name", "nopreload", "--no-preload"]


@pytest.fixture(scope="module")
def nopreload():
    subprocess.run(CLUSTER + ["destroy"], check=True)
    subprocess.run(CLUSTER + ["start"], check=True, capture_output=True)
    env = subprocess.run(CLUSTER + ["env"], check=True, capture_output=True, text=True).stdout
    settings = dict(kv.split("=", 1) for kv in shlex.split(env) if "=" in kv)
    yield settings
    subprocess.run(CLUSTER + ["destroy"], check=True)


def test_loading_without_preload_warns_with_a_hint(nopreload):
    with psycopg.connect(
        host=nopreload["PGHOST"], port=nopreload["PGPORT"], user="postgres", dbname="datajoint", autocommit=True
    ) as c:
        notices = []
        # A Diagnostic is only valid inside the callback: copy what we check.
        c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary, d.message_hint)))
        c.execute("CREATE EXTENSION datajoint")
        warnings = [n for n in notices if n[0] == "WARNING"]
        assert len(warnings) == 1, notices
        assert "loaded without shared_preload_libraries" in warnings[0][1]
        assert "shared_preload_libraries = 'datajoint'" in warnings[0][2]
        # The extension itself works: the sandbox needs no preload.
        assert c.execute("SELECT dj.version()").fetchone()[0].startswith("datajoint ")
        assert c.execute("SHOW shared_preload_libraries").fetchone()[0] == ""


def test_preloaded_cluster_loads_silently():
    with psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), autocommit=True) as c:
        assert c.execute("SHOW shared_preload_libraries").fetchone()[0] == "datajoint"
        # The postmaster ran _PG_init while preloading: its log (since the cluster started) has
        # no preload warning. (A LOAD here would not re-run _PG_init, so it proves nothing.)
        c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
        log = cluster_log().read_text(errors="replace")
        assert "database system is ready to accept connections" in log
        assert "loaded without shared_preload_libraries" not in log
