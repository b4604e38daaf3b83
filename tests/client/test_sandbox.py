"""The sandbox seen from a real driver: failures end the call, never the backend; Postgres'
own interrupts (cancel, statement_timeout, terminate) stop a running guest promptly."""
import time

import psycopg
import pytest
from psycopg import errors

from conftest import connect, execute_in_thread, wait_until_active
from wat import ANSWER, BOMB, CALL, COUNT, LOOP, MULTI_MEMORY_BOMB, TRAP


def test_result_round_trips(conn):
    assert conn.execute(CALL, (ANSWER,)).fetchone()[0] == 42


@pytest.mark.parametrize(
    "module, settings, error, sqlstate",
    [
        (TRAP, {}, errors.ExternalRoutineException, "38000"),
        (LOOP, {"dj.make_timeout": "150ms"}, errors.QueryCanceled, "57014"),
        (LOOP, {"dj.make_fuel": "3"}, errors.ProgramLimitExceeded, "54000"),
        (BOMB, {"dj.make_memory_limit": "8MB"}, errors.OutOfMemory, "53200"),
        (MULTI_MEMORY_BOMB, {"dj.make_memory_limit": "8MB"}, errors.OutOfMemory, "53200"),
    ],
    ids=["trap", "timeout", "fuel", "memory", "multi-memory"],
)
def test_failure_is_a_clean_error_and_the_backend_survives(conn, server_log, module, settings, error, sqlstate):
    pid = conn.info.backend_pid
    for name, value in settings.items():
        conn.execute(f"SET {name} = '{value}'")
    with pytest.raises(error) as failure:
        conn.execute(CALL, (module,))
    assert failure.value.sqlstate == sqlstate
    assert failure.value.diag.message_hint, "every sandbox error carries a HINT"
    # Same connection, same backend process (server_log checks nothing crashed).
    assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert conn.info.backend_pid == pid
    assert conn.execute(CALL, (ANSWER,)).fetchone()[0] == 42


def test_pg_cancel_backend_stops_a_running_guest(conn, admin, server_log):
    conn.execute("SET dj.make_timeout = 0")  # only the cancel can stop it
    pid = conn.info.backend_pid
    thread, outcome = execute_in_thread(conn, CALL, (LOOP,))
    wait_until_active(admin, pid)
    time.sleep(0.2)
    assert admin.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], errors.QueryCanceled)
    assert "canceling statement due to user request" in str(outcome["error"])
    assert outcome["seconds"] < 5
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid


def test_statement_timeout_stops_a_running_guest(conn):
    conn.execute("SET dj.make_timeout = 0")
    conn.execute("SET statement_timeout = '300ms'")
    started = time.monotonic()
    with pytest.raises(errors.QueryCanceled, match="statement timeout"):
        conn.execute(CALL, (LOOP,))
    assert time.monotonic() - started < 3
    conn.execute("RESET statement_timeout")
    assert conn.execute(CALL, (ANSWER,)).fetchone()[0] == 42


def test_terminate_ends_only_that_backend(admin, server_log):
    victim = connect()
    victim.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    victim.execute("SET dj.make_timeout = 0")
    other = connect()
    pid = victim.info.backend_pid
    thread, outcome = execute_in_thread(victim, CALL, (LOOP,))
    wait_until_active(admin, pid)
    time.sleep(0.2)
    assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], psycopg.OperationalError)
    assert outcome["seconds"] < 5
    # The rest of the server is untouched: an unrelated session that was open all along still
    # works (a crash would have made the postmaster end it), and server_log shows no crash.
    assert other.execute("SELECT 1").fetchone()[0] == 1
    assert "terminating connection due to administrator command" in server_log()
    other.close()
    victim.close()


def test_many_failures_in_one_backend_leave_it_healthy(conn, server_log):
    pid = conn.info.backend_pid
    conn.execute("SET dj.make_timeout = '20ms'")
    conn.execute("SET dj.make_memory_limit = '4MB'")
    expected = {TRAP: "38000", LOOP: "57014", BOMB: "53200"}
    rss_before = None
    for i in range(60):
        module = (TRAP, LOOP, BOMB)[i % 3]
        with pytest.raises(psycopg.Error) as failure:
            conn.execute(CALL, (module,))
        assert failure.value.sqlstate == expected[module]
        if i == 5:  # after the engine, ticker and code caches exist
            rss_before = backend_rss_kb(pid)
    # No per-call leak: 54 more failed calls leave resident memory where it was (within 8 MiB).
    assert backend_rss_kb(pid) - rss_before < 8 * 1024
    assert conn.execute(CALL, (ANSWER,)).fetchone()[0] == 42
    assert conn.info.backend_pid == pid


def backend_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_harmless_interrupts_do_not_stop_a_guest(conn):
    """client_connection_check_interval raises InterruptPending every few ms while a query runs;
    only a cancel or terminate may stop the guest."""
    conn.execute("SET dj.make_timeout = 0")
    conn.execute("SET client_connection_check_interval = '5ms'")
    started = time.monotonic()
    assert conn.execute(CALL, (COUNT,)).fetchone()[0] == 200_000_000
    assert time.monotonic() - started > 0.05, "the guest must outlive several check intervals"
