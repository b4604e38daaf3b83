-- The demo pipeline, run by `make demo` against the dev cluster (idempotent: it starts afresh).
-- It declares a pipeline, computes it with make functions (WebAssembly components from
-- udfs/components, sources in udfs/rust and udfs/python), reads it back and draws it.
\pset footer off
\set ON_ERROR_STOP 1
-- The dev cluster follows the working tree: the extension is recreated from the installed build
-- (its version does not change while it is developed), which also drops its catalog of modules.
DROP EXTENSION IF EXISTS datajoint CASCADE;
CREATE EXTENSION datajoint;
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
spike_count : int64
$$);
SELECT dj.declare('demo.Recording.Channel', 'part', $$
-> master
channel : int16
---
spikes : int64
$$);
SELECT dj.declare('demo.SpikeRate', 'computed', $$
-> Recording
---
mean_rate : float64    # spikes per second
$$);
SELECT dj.declare('demo.UnitRates', 'computed', $$
-> Recording
---
n_units : int32
$$);
SELECT dj.declare('demo.UnitRates.Unit', 'part', $$
-> master
unit : int32
---
rate : float64
$$);
SELECT dj.declare('demo.ChannelStats', 'computed', $$
-> Recording
---
n_channels : int32
total_spikes : int64
mean_rate : float64
max_rate : float64
$$);
SELECT dj.declare('demo.Quality', 'computed', $$
-> Recording
---
rate : float64
label : varchar(16)
$$);
INSERT INTO demo.subject (subject_id, sex) VALUES (1, 'M'), (2, 'F');
INSERT INTO demo.session (subject_id, session, probe) VALUES (1, 1, 'neuropixels'), (1, 2, 'tetrode'), (2, 1, 'neuropixels');
INSERT INTO demo._recording SELECT subject_id, session, 600, 2000 * subject_id * session FROM demo.session;
INSERT INTO demo._recording__channel SELECT subject_id, session, c, 100 * c * session + subject_id FROM demo.session, generate_series(1, 4) c;

\echo '== Make functions: WebAssembly components, compiled once when registered'
\set spike_rate `base64 -w0 udfs/components/spike_rate.wasm`
\set unit_rates `base64 -w0 udfs/components/unit_rates.wasm`
\set channel_stats `base64 -w0 udfs/components/channel_stats.wasm`
\set quality `base64 -w0 udfs/components/quality.wasm`
\set misbehave `base64 -w0 udfs/components/misbehave.wasm`
SELECT dj.register_module('spike_rate', decode(:'spike_rate', 'base64')) AS spike_rate_sha256;
SELECT dj.register_module('unit_rates', decode(:'unit_rates', 'base64')) AS unit_rates_sha256;
SELECT dj.register_module('channel_stats', decode(:'channel_stats', 'base64')) AS channel_stats_sha256;
\echo '(the Python component carries CPython: its first compile takes a few seconds)'
SELECT dj.register_module('quality', decode(:'quality', 'base64')) AS quality_sha256;
SELECT dj.set_make('demo.SpikeRate', 'spike_rate');
SELECT dj.set_make('demo.UnitRates', 'unit_rates');
SELECT dj.set_make('demo.ChannelStats', 'channel_stats');
SELECT dj.set_make('demo.Quality', 'quality');

\echo '== populate: every missing key, one subtransaction each'
SELECT * FROM dj.progress('demo.SpikeRate');
SELECT * FROM dj.populate('demo.SpikeRate');            -- Rust: one upstream row in, one row out
SELECT * FROM dj.populate('demo.UnitRates');            -- Rust: a master row and its parts
SELECT * FROM dj.populate('demo.ChannelStats');         -- Rust: aggregates the recording's channels
SELECT * FROM dj.populate('demo.Quality');              -- Python
SELECT subject_id, session, mean_rate FROM demo.__spike_rate ORDER BY 1, 2;
SELECT subject_id, session, count(*) AS units FROM demo.__unit_rates__unit GROUP BY 1, 2 ORDER BY 1, 2;
SELECT subject_id, session, n_channels, total_spikes, max_rate FROM demo.__channel_stats ORDER BY 1, 2;
SELECT subject_id, session, rate, label FROM demo.__quality ORDER BY 1, 2;
SELECT subject_id, session, left(_job_version, 12) AS module, round(_job_duration::numeric, 6) AS seconds
  FROM demo.__quality ORDER BY 1, 2;

\echo '== Objects: traces in the embedded object store, read and written by a make function'
SELECT dj.declare('demo.Trace', 'manual', $$
# a recording's trace, kept in the object store (the embedded file store `local`)
-> Recording
---
trace : <blob@local>          # float64 samples
gain : <blob>                 # scale factor, in the row
$$);
SELECT dj.declare('demo.TraceStats', 'computed', $$
-> Trace
---
n : int64
mean : float64
peak : float64
centered : <blob@local>       # the scaled, mean-centred trace
summary : <blob>              # [n, mean, peak]
report : <object@local>       # a text report
$$);
SELECT dj.declare('demo.TraceStats.Window', 'part', $$
-> master
window : int32
---
energy : float64
samples : <npy@local>         # the window's samples, as numpy's .npy
$$);
INSERT INTO demo.trace
SELECT subject_id, session,
       dj.object_put('demo.Trace', 'trace', dj.blob_encode(
         (SELECT pg_catalog.jsonb_agg(sin(x / 50.0 * session) * subject_id) FROM generate_series(1, 100000) x),
         'float64')),
       dj.blob_encode('[2.0]', 'float64')
  FROM demo._recording;
\set trace_stats `base64 -w0 udfs/components/trace_stats.wasm`
SELECT dj.register_module('trace_stats', decode(:'trace_stats', 'base64')) AS trace_stats_sha256;
SELECT dj.set_make('demo.TraceStats', 'trace_stats');
SELECT * FROM dj.populate('demo.TraceStats');           -- Rust: streams each trace in, writes objects back
SELECT subject_id, session, n, round(mean::numeric, 6) AS mean, round(peak::numeric, 6) AS peak,
       dj.blob_decode(summary) -> 'shape' AS summary_shape
  FROM demo.__trace_stats ORDER BY 1, 2;
SELECT convert_from(dj.object_read(report), 'UTF8') AS report FROM demo.__trace_stats
 WHERE subject_id = 1 AND session = 1;
SELECT attribute, key, store, path, size FROM dj.object_refs('demo.TraceStats') ORDER BY key::text, attribute;
SELECT count(*) AS windows, sum(energy)::int AS energy FROM demo.__trace_stats__window;

\echo '== The query algebra: the same questions from psql, Python or a BI tool'
SELECT dj.rel('demo.Recording') * dj.rel('demo.SpikeRate') & 'mean_rate > 1' AS expression;
SELECT * FROM dj.fetch(dj.rel('demo.Recording') * dj.rel('demo.SpikeRate') & 'mean_rate > 1', 'mean_rate DESC');
SELECT * FROM dj.fetch(dj.aggr(dj.rel('demo.Subject'), dj.rel('demo.Recording'),
                               'recordings = count(session)', 'spikes = sum(spike_count)'), 'KEY');
SELECT * FROM dj.fetch(dj.aggr(dj.u('probe'), dj.rel('demo.Session') * dj.rel('demo.Quality'),
                               'sessions = count(*)', 'best = max(rate)'));
SELECT dj.sql(dj.rel('demo.Subject') - dj.rel('demo.Recording'));
SELECT dj.create_view('demo.recording_rates', dj.rel('demo.Recording') * dj.rel('demo.SpikeRate'));
SELECT * FROM demo.recording_rates ORDER BY 1, 2;

\echo '== What a dashboard sees: the pipeline as views a BI tool can use as datasets'
SELECT class_name, tier, rows, make_module, remaining, errors FROM dj.pipeline_tables
 WHERE schema_name = 'demo' ORDER BY class_name;
SELECT attribute, datajoint_type, in_key, comment FROM dj.pipeline_columns
 WHERE schema_name = 'demo' AND class_name = 'Recording' ORDER BY position;

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
SELECT dj.diagram('demo') AS mermaid;

\echo '== Deleting a subject takes everything downstream (preview)'
SELECT * FROM dj.delete_preview('demo.Subject', 'subject_id = 1');

\echo '== A make function that misbehaves is stopped; the session carries on'
SELECT dj.declare('demo.Case', 'manual', E'case_id : int32\n---\nmode : varchar(16)\nn : int64');
SELECT dj.declare('demo.Outcome', 'computed', E'-> Case\n---\nvalue : int64');
SELECT dj.register_module('misbehave', decode(:'misbehave', 'base64')) AS misbehave_sha256;
SELECT dj.set_make('demo.Outcome', 'misbehave');
INSERT INTO demo.case VALUES (1, 'ok', 21), (2, 'loop', 0), (3, 'panic', 0), (4, 'foreign-insert', 0);
SET dj.make_timeout = '100ms';
SELECT * FROM dj.populate('demo.Outcome', suppress_errors => true);
SELECT case_id, status, split_part(error_message, E'\n', 1) AS error FROM demo."~~outcome" ORDER BY 1;
RESET dj.make_timeout;
SELECT 'still serving' AS backend;
