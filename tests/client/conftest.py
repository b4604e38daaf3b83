"""Client tests run against the cluster whose PG* settings are in the environment
(scripts/test.sh exports those of the throwaway "test" cluster)."""
import os
import pathlib
import subprocess

import psycopg
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def pytest_configure(config):
    missing = [v for v in ("PGHOST", "PGPORT") if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not set: run through scripts/test.sh, or "
            'eval "$(scripts/cluster.sh --name test env)" first'
        )


def connect(**kw) -> psycopg.Connection:
    return psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), autocommit=True, **kw)


@pytest.fixture
def conn():
    c = connect()
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    yield c
    c.close()


@pytest.fixture
def admin():
    c = connect()
    yield c
    c.close()


def cluster_log() -> pathlib.Path:
    """The server log of the cluster under test (scripts/cluster.sh --name $DJ_TEST_CLUSTER)."""
    name = os.environ.get("DJ_TEST_CLUSTER", "test")
    root = subprocess.run(
        [str(REPO / "scripts" / "cluster.sh"), "--name", name, "dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return pathlib.Path(root) / "postgres.log"


@pytest.fixture
def server_log():
    """Lines the server logs during the test. A crashed backend shows here (and the postmaster
    restarts everyone) even when the client only sees a dropped connection."""
    path = cluster_log()
    start = path.stat().st_size

    def new_lines() -> str:
        with path.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    yield new_lines
    crash_marks = ("terminated by signal", "was terminated by", "all server processes terminated", "PANIC")
    tail = new_lines()
    assert not any(m in tail for m in crash_marks), tail
