-- The worker pool and the job queue: populate with workers, runs, jobs, and what each refuses.
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS wrk CASCADE;
\set SHOW_CONTEXT never
\set misbehave `base64 -w0 udfs/components/misbehave.wasm`
SELECT length(dj.register_module('misbehave', decode(:'misbehave', 'base64'))) AS sha256_hex_digits;
SELECT dj.declare('wrk.Case', 'manual', E'case_id : int32\n---\nmode : varchar(16)\nn : int64');
SELECT dj.declare('wrk.Outcome', 'computed', E'-> Case\n---\nvalue : int64');
SELECT dj.declare('wrk.Outcome.Detail', 'part', E'-> master\n---\nnote : varchar(8)');
SELECT dj.set_make('wrk.Outcome', 'misbehave');
INSERT INTO wrk.case VALUES (1, 'ok', 1), (2, 'err', 2), (3, 'ok', 3), (4, 'ok', 4);

-- Bad arguments.
SELECT * FROM dj.populate('wrk.Outcome', workers => 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', workers => 17);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', retries => -1);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', priority => 256);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', max_calls => -1);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', "order" => 'sideways');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome.Detail');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Case');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', 'nope = 1');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.populate_async('wrk.Outcome', repeat('case_id = 1 OR ', 400) || 'true');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.wait(424242);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.cancel(424242);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.jobs('wrk.Case');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- The first failure ends a run without suppress_errors; the failed key is recorded (one worker:
-- with two, the other may make a key meanwhile).
SELECT * FROM dj.populate('wrk.Outcome', workers => 1);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT key, status, priority, error_message, pid > 0 AS by_a_process, duration >= 0 AS timed
  FROM dj.jobs('wrk.Outcome') WHERE status = 'error';
-- With suppress_errors every other key is made; the failure stays an error row.
SELECT * FROM dj.populate('wrk.Outcome', suppress_errors => true, workers => 2);
SELECT count(*) AS made FROM wrk.__outcome;
SELECT key, status FROM dj.jobs('wrk.Outcome');
SELECT table_name, role_name, workers, state, done, errors, remaining, finished >= started AS ended
  FROM dj.runs ORDER BY id;

-- ignore: no run takes the key; clearing errors queues it again.
SELECT dj.jobs_ignore('wrk.Outcome', 'case_id = 2') AS ignored;
SELECT * FROM dj.populate('wrk.Outcome', suppress_errors => true, workers => 1);
DELETE FROM wrk."~~outcome";
INSERT INTO wrk.case VALUES (5, 'ok', 5), (6, 'err', 6);
SELECT * FROM dj.jobs_refresh('wrk.Outcome', 'case_id > 4', priority => 3);
SELECT key, status, priority FROM dj.jobs('wrk.Outcome');
SELECT dj.jobs_reserve('wrk.Outcome');
SELECT key, status, "user_name", connection_id = pg_backend_pid() AS mine FROM dj.jobs('wrk.Outcome') WHERE status = 'reserved';
-- This session is alive: a refresh keeps its reservation (and queues key 2 again).
SELECT * FROM dj.jobs_refresh('wrk.Outcome');
SELECT dj.jobs_clear_errors('wrk.Outcome') AS cleared;

-- Workers see only committed rows: not from a transaction that has written (they could not see
-- its rows, and could wait for its locks while it waits for them).
BEGIN;
INSERT INTO wrk.case VALUES (7, 'ok', 7);
SELECT * FROM dj.populate('wrk.Outcome', 'case_id = 7', workers => 1);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;

DROP SCHEMA wrk CASCADE;
SELECT dj.unregister_module('misbehave');
