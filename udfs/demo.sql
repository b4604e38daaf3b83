-- The demo pipeline, run by `make demo` against the dev cluster (idempotent: it starts afresh).
-- Make functions and dj.populate join it with their issue; today it shows declaring a pipeline,
-- reading it back, drawing it, and the WebAssembly sandbox inside the backend.
\pset footer off
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS datajoint;
SELECT dj.version();
DROP SCHEMA IF EXISTS demo CASCADE;

\echo '== A pipeline in DataJoint''s definition language'
SELECT dj.declare('demo.Subject', 'manual', $$
# Experimental subject
subject_id : int32
---
species = "mouse" : varchar(32)
sex : enum('M', 'F', 'U')
$$);
SELECT dj.declare('demo.Probe', 'lookup', $$
probe : varchar(16)
---
channels : int16
$$, contents => '[["neuropixels", 384], ["tetrode", 4]]');
SELECT dj.declare('demo.Session', 'manual', $$
-> Subject
session : int16
---
-> Probe
recorded = CURRENT_TIMESTAMP : datetime
$$);
SELECT dj.declare('demo.Recording', 'imported', $$
-> Session
---
duration : float64     # seconds
$$);
SELECT dj.declare('demo.SpikeRate', 'computed', $$
-> Recording
---
mean_rate : float64    # spikes per second
$$);
SELECT dj.declare('demo.SpikeRate.Unit', 'part', $$
-> master
unit : int32
---
rate : float64
$$);
INSERT INTO demo.subject (subject_id, sex) VALUES (1, 'M'), (2, 'F');
INSERT INTO demo.session (subject_id, session, probe) VALUES (1, 1, 'neuropixels'), (1, 2, 'tetrode'), (2, 1, 'neuropixels');
INSERT INTO demo._recording SELECT subject_id, session, 600 FROM demo.session;

\echo '== What a DataJoint client sees'
SELECT * FROM dj.tables('demo');
SELECT dj.describe('demo.Session');
SELECT class_name, tier FROM dj.descendants('demo.Subject');

\echo '== The diagram, as SVG in target/demo/pipeline.svg (open it in a browser)'
\! mkdir -p target/demo
\pset format unaligned
\pset tuples_only on
\o target/demo/pipeline.svg
SELECT dj.diagram(ARRAY['demo'], 'svg');
\o
\pset format aligned
\pset tuples_only off
SELECT dj.diagram(ARRAY['demo']) AS mermaid;

\echo '== Deleting a subject takes everything downstream (preview)'
SELECT * FROM dj.delete_preview('demo.Subject', 'subject_id = 1');

\echo '== A WebAssembly module runs inside this backend...'
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
