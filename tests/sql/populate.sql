-- Make functions and dj.populate: registering WebAssembly components, running them once per
-- missing key in a subtransaction each, and every way a make function can fail.
-- The components are the committed fixtures of udfs/components (sources in udfs/rust, udfs/python).
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS pop CASCADE;
\set SHOW_CONTEXT never
\set spike_rate `base64 -w0 udfs/components/spike_rate.wasm`
\set unit_rates `base64 -w0 udfs/components/unit_rates.wasm`
\set channel_stats `base64 -w0 udfs/components/channel_stats.wasm`
\set quality `base64 -w0 udfs/components/quality.wasm`
\set misbehave `base64 -w0 udfs/components/misbehave.wasm`

-- Registration checks what it is given: a component of the world datajoint:make/make.
SELECT dj.register_module('junk', '\x00010203'::bytea);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.register_module('core', '\x0061736d01000000'::bytea);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.register_module('empty', convert_to('(component)', 'UTF8'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.register_module('http', convert_to('(component (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func)))))', 'UTF8'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.register_module('wrong', convert_to('(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func (export "make") (canon lift (core func $i "f"))))', 'UTF8'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.register_module('no spaces', decode(:'spike_rate', 'base64'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT length(dj.register_module('spike_rate', decode(:'spike_rate', 'base64'))) AS sha256_hex_digits;
SELECT length(dj.register_module('unit_rates', decode(:'unit_rates', 'base64'))) AS sha256_hex_digits;
SELECT length(dj.register_module('channel_stats', decode(:'channel_stats', 'base64'))) AS sha256_hex_digits;
SELECT length(dj.register_module('misbehave', decode(:'misbehave', 'base64'))) AS sha256_hex_digits;
SELECT m.name, v.sha256 = encode(sha256(v.component), 'hex') AS hash_ok, m.registered_by
  FROM dj.modules m JOIN dj.module_versions v USING (sha256) ORDER BY m.name;
-- Compiled once: the machine code is cached for every backend (readable only by the extension).
SELECT count(*) AS artifacts FROM dj.module_artifacts;

-- The demo pipeline.
SELECT dj.declare('pop.Subject', 'manual', 'subject_id : int32');
SELECT dj.declare('pop.Probe', 'lookup', E'probe : varchar(16)\n---\nchannels : int16',
                  contents => '[["neuropixels", 384], ["o''tetrode", 4]]');
SELECT dj.declare('pop.Session', 'manual', E'-> Subject\nsession : int16\n---\n-> Probe');
SELECT dj.declare('pop.Recording', 'imported', E'-> Session\n---\nduration : float64\nspike_count : int64');
SELECT dj.declare('pop.Recording.Channel', 'part', E'-> master\nchannel : int16\n---\nspikes : int64');
SELECT dj.declare('pop.SpikeRate', 'computed', E'-> Recording\n---\nmean_rate : float64');
SELECT dj.declare('pop.UnitRates', 'computed', E'-> Recording\n---\nn_units : int32');
SELECT dj.declare('pop.UnitRates.Unit', 'part', E'-> master\nunit : int32\n---\nrate : float64');
SELECT dj.declare('pop.ChannelStats', 'computed', E'-> Recording\n---\nn_channels : int32\ntotal_spikes : int64\nmean_rate : float64\nmax_rate : float64');
SELECT dj.declare('pop.Quality', 'computed', E'-> Recording\n---\nrate : float64\nlabel : varchar(16)');
INSERT INTO pop.subject VALUES (1), (2), (3);
INSERT INTO pop.session VALUES (1, 1, 'neuropixels'), (1, 2, 'o''tetrode'), (2, 1, 'neuropixels');
INSERT INTO pop._recording VALUES (1, 1, 100, 1500), (1, 2, 50, 100), (2, 1, 200, 4000);
INSERT INTO pop._recording__channel SELECT 1, 1, c, 100 * c FROM generate_series(1, 5) c;
INSERT INTO pop._recording__channel SELECT 1, 2, c, 10 + c FROM generate_series(1, 3) c;

-- A make function is chosen per table, by its owner; only Computed and Imported tables have one.
SELECT dj.set_make('pop.Subject', 'spike_rate');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.set_make('pop.UnitRates.Unit', 'unit_rates');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.set_make('pop.SpikeRate', 'nonesuch');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.SpikeRate');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.set_make('pop.SpikeRate', 'spike_rate');
SELECT dj.set_make('pop.UnitRates', 'unit_rates');
SELECT dj.set_make('pop.ChannelStats', 'channel_stats');
SELECT schema_name, table_name, module FROM dj.makes ORDER BY 2;

-- Key source: the primary-key parents' keys; progress counts what is missing.
SELECT * FROM dj.key_source('pop.SpikeRate');
SELECT * FROM dj.key_source('pop.SpikeRate', 'subject_id = 1 and session > 1');
SELECT * FROM dj.key_source('pop.SpikeRate', 'duration > 1');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.progress('pop.SpikeRate');

-- populate: restricted, limited, ordered; then the rest; then nothing is left.
SELECT * FROM dj.populate('pop.SpikeRate', 'subject_id = 1', max_calls => 1, "order" => 'reverse');
SELECT subject_id, session, mean_rate FROM pop.__spike_rate;
SELECT * FROM dj.progress('pop.SpikeRate');
SELECT * FROM dj.populate('pop.SpikeRate');
SELECT * FROM dj.populate('pop.SpikeRate');
SELECT subject_id, session, mean_rate, length(_job_version) AS version_digits,
       _job_version = (SELECT sha256 FROM dj.modules WHERE name = 'spike_rate') AS by_spike_rate,
       _job_duration >= 0 AS timed, abs(extract(epoch FROM localtimestamp - _job_start_time)) < 600 AS started_recently
  FROM pop.__spike_rate ORDER BY 1, 2;
SELECT * FROM dj.populate('pop.SpikeRate', "order" => 'sideways');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.SpikeRate', max_calls => -1);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Master and parts in one call (the probe named with a quote is reached through Session).
SELECT * FROM dj.populate('pop.UnitRates');
SELECT subject_id, session, n_units FROM pop.__unit_rates ORDER BY 1, 2;
SELECT subject_id, session, count(*) AS units, round(min(rate)::numeric, 3) AS min_rate, round(max(rate)::numeric, 3) AS max_rate
  FROM pop.__unit_rates__unit GROUP BY 1, 2 ORDER BY 1, 2;

-- Aggregating many upstream rows (the channels, parts of the recording); recording (2, 1) has no
-- channels yet: its make refuses the key.
SELECT * FROM dj.populate('pop.ChannelStats');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS rows_after_failed_populate FROM pop.__channel_stats;
SELECT * FROM dj.populate('pop.ChannelStats', suppress_errors => true);
SELECT subject_id, session, n_channels, total_spikes, mean_rate, max_rate FROM pop.__channel_stats ORDER BY 1, 2;
-- The failure is recorded in the jobs table, laid out as datajoint-python 2.x lays it out.
SELECT subject_id, session, status, priority, error_message, length(version) AS version_digits,
       pid = pg_backend_pid() AS this_backend, completed_time IS NOT NULL AS completed
  FROM pop."~~channel_stats";
SELECT column_name, data_type, column_default FROM information_schema.columns
 WHERE table_schema = 'pop' AND table_name = '~~channel_stats' ORDER BY ordinal_position;
-- Once the key can be computed, populate does it and clears its record.
INSERT INTO pop._recording__channel VALUES (2, 1, 1, 7);
SELECT * FROM dj.populate('pop.ChannelStats', suppress_errors => true);
SELECT count(*) AS job_records FROM pop."~~channel_stats";

-- A Python make function (componentize-py): the same contract.
SELECT length(dj.register_module('quality', decode(:'quality', 'base64'))) AS sha256_hex_digits;
SELECT dj.set_make('pop.Quality', 'quality');
SELECT * FROM dj.populate('pop.Quality');
SELECT subject_id, session, rate, label FROM pop.__quality ORDER BY 1, 2;

-- Every way a make function can fail: a clean ERROR with its SQLSTATE, nothing written, and
-- the session carries on.
SELECT dj.declare('pop.Case', 'manual', E'case_id : int32\n---\nmode : varchar(16)\nn : int64');
SELECT dj.declare('pop.Outcome', 'computed', E'-> Case\n---\nvalue : int64');
SELECT dj.declare('pop.Other', 'manual', E'other_id : int32');
SELECT dj.set_make('pop.Outcome', 'misbehave');
INSERT INTO pop.case VALUES
  (1, 'ok', 5), (2, 'err', 0), (3, 'panic', 0), (4, 'trap', 0), (5, 'loop', 0), (6, 'bomb', 0),
  (7, 'partial', 0), (8, 'dup', 0), (9, 'foreign-insert', 0), (10, 'foreign-fetch', 0),
  (11, 'bad-attr', 0), (12, 'bad-type', 0), (13, 'log', 13), (14, 'stdout', 14), (15, 'sleep', 15),
  (16, 'big', 16), (17, 'expr', 17), (18, 'foreign-expr', 0), (19, 'bad-expr', 0);
SET dj.make_timeout = '200ms';
SET dj.make_memory_limit = '64MB';
\set VERBOSITY terse
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 2');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 3');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 4');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 5');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SET dj.make_fuel = 50;
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 5');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET dj.make_fuel;
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 6');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 7');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 8');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 9');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 10');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 11');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 12');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Relation expressions in a guest's fetch: the tables they name must be readable too.
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 18');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 19');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- Nothing of the failed keys was written (the partial insert of case 7 included).
SELECT count(*) AS outcomes FROM pop.__outcome;
-- The harmless cases: messages at each level, stdout (to the server log), a sleep, a limit, an
-- expression computing the value in the database.
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 1 or case_id between 13 and 17');
SELECT case_id, value FROM pop.__outcome ORDER BY 1;
-- With suppress_errors every failing key is recorded and populate goes on.
SELECT * FROM dj.populate('pop.Outcome', suppress_errors => true);
SELECT case_id, status, split_part(error_message, E'\n', 1) AS error FROM pop."~~outcome" ORDER BY 1;

-- A make function runs as the role that called populate: its grants apply.
CREATE ROLE pop_analyst;
GRANT USAGE ON SCHEMA pop TO pop_analyst;
GRANT SELECT, INSERT ON pop.__outcome TO pop_analyst;
GRANT SELECT ON pop.case TO pop_analyst;
ALTER TABLE pop.case ENABLE ROW LEVEL SECURITY;
CREATE POLICY small_cases ON pop.case TO pop_analyst USING (case_id < 100);
INSERT INTO pop.case VALUES (100, 'ok', 100), (101, 'ok', 101);
SET ROLE pop_analyst;
-- Row-level security hides cases 100 and 101 from this role: nothing to do.
SELECT * FROM dj.populate('pop.Outcome', 'case_id >= 100');
RESET ROLE;
REVOKE INSERT ON pop.__outcome FROM pop_analyst;
ALTER TABLE pop.case DISABLE ROW LEVEL SECURITY;
SET ROLE pop_analyst;
-- Without INSERT on the target, the make's insert is refused like any other.
SELECT * FROM dj.populate('pop.Outcome', 'case_id >= 100');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT * FROM dj.populate('pop.Outcome', 'case_id >= 100');

-- Server-enforced tiers: a direct INSERT is refused, populate may write.
SELECT dj.enforce_tiers('pop');
INSERT INTO pop.__outcome VALUES (13, 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM dj.delete('pop.Case', 'case_id = 101');
INSERT INTO pop.case VALUES (101, 'ok', 1);
SELECT * FROM dj.populate('pop.Outcome', 'case_id = 101');
SELECT dj.enforce_tiers('pop', false);

-- Stale rows: a new version of the module under the same name (here: the same code with an extra
-- custom section, so a different hash) changes nothing until the table's owner binds it; then the
-- old rows are stale, and recompute_stale redoes them.
SELECT count(*) AS stale_before FROM dj.stale('pop.SpikeRate');
SELECT length(dj.register_module('spike_rate', decode(:'spike_rate', 'base64') || '\x00050474657374'::bytea)) AS sha256_hex_digits;
SELECT count(*) AS stale_while_bound_to_the_old_version FROM dj.stale('pop.SpikeRate');
SELECT count(*) AS versions_kept FROM dj.module_versions;
SELECT dj.set_make('pop.SpikeRate', 'spike_rate');
SELECT * FROM dj.stale('pop.SpikeRate');
SELECT * FROM dj.populate('pop.SpikeRate', recompute_stale => true);
SELECT count(*) AS stale_after FROM dj.stale('pop.SpikeRate');
-- The old version is used by no name and no table any more: gone, with its machine code.
SELECT count(*) AS versions_left FROM dj.module_versions;
SELECT count(*) = count(DISTINCT sha256) AS one_artifact_per_version FROM dj.module_artifacts;

-- Registering is not for every role: a superuser grants it. Replacing another role's module is
-- refused; nobody writes the module catalog directly.
SET ROLE pop_analyst;
SELECT length(dj.register_module('analyst_copy', decode(:'spike_rate', 'base64'))) AS sha256_hex_digits;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) TO pop_analyst;
SET ROLE pop_analyst;
SELECT length(dj.register_module('analyst_copy', decode(:'spike_rate', 'base64'))) AS sha256_hex_digits;
SELECT name, registered_by FROM dj.modules WHERE name = 'analyst_copy';
SELECT dj.register_module('spike_rate', decode(:'spike_rate', 'base64'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.unregister_module('spike_rate');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
UPDATE dj.modules SET name = 'mine' WHERE name = 'spike_rate';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DELETE FROM dj.makes;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.unregister_module('analyst_copy');
SELECT dj.set_make('pop.Outcome', 'spike_rate');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT count(*) AS makes_before_drop FROM dj.makes;
DROP SCHEMA pop CASCADE;
-- Dropped tables take their makes with them.
SELECT count(*) AS makes_after_drop FROM dj.makes;
DELETE FROM dj.modules;
SELECT dj._collect_module_versions();
SELECT count(*) AS versions_after_cleanup FROM dj.module_versions;
REVOKE EXECUTE ON FUNCTION dj.register_module(text, bytea), dj.unregister_module(text) FROM pop_analyst;
DROP ROLE pop_analyst;
