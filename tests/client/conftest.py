"""Client tests run against the cluster whose PG* settings are in the environment
(scripts/test.sh exports those of the throwaway "test" cluster)."""
import os
import pathlib

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
