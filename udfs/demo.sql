-- The demo pipeline, run by `make demo` against the dev cluster.
-- Today it shows the foundation: the extension and the WebAssembly sandbox inside the backend.
-- Tables, dependencies and populate join it as their issues land.
\pset footer off
CREATE EXTENSION IF NOT EXISTS datajoint;
ALTER EXTENSION datajoint UPDATE;
SELECT dj.version();

\echo 'A WebAssembly module runs inside this backend...'
SELECT dj._sandbox_call(convert_to('(module (func (export "run") (result i64)
  (local $i i64) (local $sum i64)
  (loop (local.set $sum (i64.add (local.get $sum) (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br_if 0 (i64.lt_u (local.get $i) (i64.const 1000001))))
  (local.get $sum)))', 'UTF8')) AS sum_of_1_to_a_million;

\echo '...and a runaway one is stopped without harming the session:'
SET dj.make_timeout = '100ms';
\set ON_ERROR_STOP 0
SELECT dj._sandbox_call(convert_to('(module (func (export "run") (loop (br 0))))', 'UTF8'));
\set ON_ERROR_STOP 1
RESET dj.make_timeout;
SELECT 'still serving' AS backend;
