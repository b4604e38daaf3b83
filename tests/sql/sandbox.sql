-- WebAssembly inside the backend: a result, then a trap, an infinite loop and a memory bomb,
-- each a clean ERROR with its SQLSTATE, after which the same backend keeps serving queries.
CREATE EXTENSION IF NOT EXISTS datajoint;
SELECT pg_backend_pid() AS pid \gset
CREATE FUNCTION pg_temp.sqlstate_of(query text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE query;
  RETURN 'no error';
EXCEPTION WHEN query_canceled OR others THEN  -- OTHERS alone does not catch 57014
  RETURN SQLSTATE;
END $$;

SELECT dj._sandbox_call(convert_to('(module (func (export "run") (result i64) i64.const 42))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module (func (export "main") (result i32) i32.const 7))', 'UTF8'), 'main');

-- 1. A trap: the guest's reason, and a wasm backtrace as DETAIL.
SELECT dj._sandbox_call(convert_to('(module (func $compute (export "run") unreachable))', 'UTF8'));
SELECT pg_temp.sqlstate_of($q$SELECT dj._sandbox_call(convert_to('(module (func (export "run") unreachable))', 'UTF8'))$q$);
SELECT pg_backend_pid() = :pid AS same_backend, 1 AS serving;

-- 2. An infinite loop: stopped by dj.make_timeout...
SET dj.make_timeout = '200ms';
SELECT dj._sandbox_call(convert_to('(module (func (export "run") (loop (br 0))))', 'UTF8'));
SELECT pg_temp.sqlstate_of($q$SELECT dj._sandbox_call(convert_to('(module (func (export "run") (loop (br 0))))', 'UTF8'))$q$);
SELECT pg_backend_pid() = :pid AS same_backend, 1 AS serving;
-- ...by the fuel budget...
RESET dj.make_timeout;
SET dj.make_fuel = 5;
SELECT dj._sandbox_call(convert_to('(module (func (export "run") (loop (br 0))))', 'UTF8'));
SELECT pg_temp.sqlstate_of($q$SELECT dj._sandbox_call(convert_to('(module (func (export "run") (loop (br 0))))', 'UTF8'))$q$);
RESET dj.make_fuel;
-- ...and by statement_timeout, which Postgres reports itself.
SET statement_timeout = '200ms';
SET dj.make_timeout = 0;
SELECT dj._sandbox_call(convert_to('(module (func (export "run") (loop (br 0))))', 'UTF8'));
RESET statement_timeout;
RESET dj.make_timeout;
SELECT pg_backend_pid() = :pid AS same_backend, 1 AS serving;

-- 3. A memory bomb: grows 64 KiB at a time until the cap stops it.
SET dj.make_memory_limit = '32MB';
SELECT dj._sandbox_call(convert_to('(module (memory 1) (func (export "run")
  (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))', 'UTF8'));
SELECT pg_temp.sqlstate_of($q$SELECT dj._sandbox_call(convert_to('(module (memory 1) (func (export "run")
  (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))', 'UTF8'))$q$);
-- A module that asks for too much memory up front is refused the same way, and the cap is for
-- all of a module's memories together.
SELECT dj._sandbox_call(convert_to('(module (memory 1000) (func (export "run")))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module (memory 300) (memory 300) (func (export "run")))', 'UTF8'));
RESET dj.make_memory_limit;
SELECT pg_backend_pid() = :pid AS same_backend, 1 AS serving;

-- Runaway recursion exhausts the guest stack, not the backend's.
SELECT dj._sandbox_call(convert_to('(module (func $recurse (export "run") (call $recurse)))', 'UTF8'));

-- Bad modules are refused before anything runs.
SELECT dj._sandbox_call('\x00010203ff'::bytea);
SELECT dj._sandbox_call(convert_to('(module (func (export "run") i32.bogus))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module (func (export "go")))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module (func (export "run") (param i32)))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module (import "env" "open" (func)) (func (export "run")))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module ' || repeat('(memory 0) ', 40) || '(func (export "run")))', 'UTF8'));
SELECT dj._sandbox_call(convert_to('(module (func (export "run")))' || repeat(' ', 1048576), 'UTF8'));
SELECT pg_temp.sqlstate_of($q$SELECT dj._sandbox_call('\x00'::bytea)$q$) AS invalid,
       pg_temp.sqlstate_of($q$SELECT dj._sandbox_call(convert_to('(module)', 'UTF8'))$q$) AS missing_export;

-- Any role may use schema dj; only superusers may run modules through this internal entry point.
CREATE ROLE dj_sandbox_nobody;
SET ROLE dj_sandbox_nobody;
SELECT dj.version() IS NOT NULL AS usable;
SELECT dj._sandbox_call(convert_to('(module (func (export "run")))', 'UTF8'));
RESET ROLE;
DROP ROLE dj_sandbox_nobody;

SELECT pg_backend_pid() = :pid AS same_backend, 1 AS serving;
