-- The query algebra in SQL: dj.relation values, the operators * & - +, dj.proj / aggr / extend /
-- top / u / not, what they compile to, their results, views for BI tools, and every error with
-- its SQLSTATE, offending fragment and hint.
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS alg CASCADE;
\set SHOW_CONTEXT never
\set VERBOSITY default
CREATE SCHEMA alg;
SELECT dj.declare('alg.Subject', 'manual', 'subject_id: int32
---
species: varchar(16)
weight: float64');
SELECT dj.declare('alg.Rig', 'lookup', 'rig: varchar(8)
---
room: int32', '[{"rig": "A", "room": 1}, {"rig": "B", "room": 2}]');
SELECT dj.declare('alg.Session', 'manual', '-> alg.Subject
session_idx: int16
---
duration: float64
-> alg.Rig');
SELECT dj.declare('alg.Scan', 'manual', '-> alg.Session
scan_idx: int16
---
depth: float64');
SELECT dj.declare('alg.Other', 'manual', 'session_idx: int16');
INSERT INTO alg.subject VALUES (1, 'mouse', 20), (2, 'rat', 300), (3, 'mouse', 25);
INSERT INTO alg.session VALUES (1, 1, 30, 'A'), (1, 2, 45, 'B'), (2, 1, 10, 'A');
INSERT INTO alg.scan VALUES (1, 1, 1, 100), (1, 1, 2, 250), (1, 2, 1, 300), (2, 1, 1, 50);

-- A relation from a class name or an SQL name; the text form is canonical and parses back.
SELECT dj.rel('alg.Subject'), dj.rel('alg.subject'), dj.rel('alg."#rig"');
SELECT dj.rel('alg.Subject') * dj.rel('alg.Session') & 'duration > 20' AS expression;
SELECT dj.rel('(alg.subject * alg.session) & ''duration > 20''')::text AS canonical;
SELECT dj.rel(dj.rel('alg.session - alg.scan')::text)::text = dj.rel('alg.Session - alg.Scan')::text AS round_trips;
SELECT 'alg.Subject & ''weight > 1'''::dj.relation AS syntax_only_cast;

-- What it compiles to: one flat SELECT; subqueries only after GROUP BY, DISTINCT, LIMIT, UNION.
SELECT dj.sql((dj.rel('alg.Subject') * dj.rel('alg.Session') * dj.rel('alg.Scan')) & 'depth > 90' & '{"subject_id": 1}');
SELECT dj.sql(dj.rel('alg.Subject') - dj.rel('alg.Session'));
SELECT dj.sql(dj.aggr(dj.rel('alg.Subject'), dj.rel('alg.Session'), 'n = count(session_idx)') & 'n > 1');
SELECT dj.sql(dj.u('species') & dj.rel('alg.Subject'));

-- Results.
SELECT * FROM dj.fetch(dj.rel('alg.Session') * dj.rel('alg.Subject') & 'duration > 20', order_by => 'KEY');
SELECT * FROM dj.fetch(dj.rel('alg.Subject') - dj.rel('alg.Session'));
SELECT * FROM dj.fetch(dj.rel('alg.Subject') & dj.rel('alg.Scan') & 'weight < 100');
SELECT * FROM dj.fetch(dj.rel('alg.Subject') & '[{"subject_id": 1}, {"subject_id": 3}]', 'subject_id DESC');
SELECT * FROM dj.fetch(dj.rel('alg.Subject') & ARRAY['weight > 250', 'species = ''mouse'' AND weight < 21']);
SELECT * FROM dj.fetch(dj.rel('alg.Subject') & dj.not('species = ''mouse'''));
-- Any of a list, then another condition; none of a list.
SELECT * FROM dj.fetch(dj.rel('alg.Subject') & ARRAY['weight > 250', 'weight < 21'] & 'species = ''mouse''');
SELECT * FROM dj.fetch(dj.rel('alg.Subject') - ARRAY['weight > 250', 'weight < 21']);
-- Outer joins compute the right side first: no match, no value.
SELECT * FROM dj.fetch(dj.extend(dj.rel('alg.Session'), dj.proj(dj.rel('alg.Rig') & 'room = 2', 'upstairs = true')), 'KEY');
SELECT * FROM dj.fetch(dj.rel('alg.Subject') - '{"species": "mouse"}'::jsonb);
SELECT * FROM dj.fetch(dj.proj(dj.rel('alg.Session'), 'minutes = duration', 'hours = round(CAST(duration / 60 AS numeric), 2)', '-rig'), 'KEY');
SELECT * FROM dj.fetch(dj.proj(dj.rel('alg.Session'), 'idx = session_idx'), 'KEY', 2, 1);
SELECT * FROM dj.fetch(dj.proj(dj.rel('alg.Subject'), 'x = coalesce(nullif(species, ''rat''), ''other'')', 'y = greatest(weight, 21)', 'z = trim(species)'), 'KEY');
SELECT * FROM dj.fetch(dj.aggr(dj.rel('alg.Subject'), dj.rel('alg.Session') * dj.rel('alg.Scan'), 'scans = count(scan_idx)', 'deepest = max(depth)'), 'KEY');
SELECT * FROM dj.fetch(dj.aggr(dj.rel('alg.Subject'), dj.rel('alg.Session'), ARRAY['n = count(*)'], exclude_nonmatching => true), 'KEY');
SELECT * FROM dj.fetch(dj.aggr(dj.u('species'), dj.rel('alg.Subject'), 'n = count(*)', 'mean_weight = avg(weight)'), 'KEY');
SELECT * FROM dj.fetch(dj.aggr(dj.u(), dj.rel('alg.Scan'), 'n = count(*)', 'mean_depth = avg(depth)'));
SELECT * FROM dj.fetch(dj.extend(dj.rel('alg.Session'), dj.rel('alg.Rig')), 'KEY');
SELECT * FROM dj.fetch(dj.top(dj.rel('alg.Scan'), 2, 'depth DESC'));
SELECT * FROM dj.fetch(dj.proj(dj.rel('alg.Subject') & 'weight > 100') + dj.proj(dj.rel('alg.Subject') & 'weight < 21'), 'KEY');
SELECT * FROM dj.fetch(dj.proj(dj.rel('alg.Subject') & 'subject_id < 3', 'species') + dj.proj(dj.rel('alg.Subject') & 'subject_id > 1', 'weight'), 'KEY');
SELECT dj.fetch1(dj.rel('alg.Subject') & '{"subject_id": 2}');
SELECT dj.count(dj.rel('alg.Session') * dj.rel('alg.Scan')), dj.primary_key(dj.rel('alg.Session') * dj.rel('alg.Scan'));
SELECT * FROM dj.heading(dj.proj(dj.rel('alg.Session') * dj.rel('alg.Rig'), 'room', 'minutes = duration', 'idx = session_idx'));
-- A key's attributes that the relation does not have are ignored, as in DataJoint.
SELECT dj.count(dj.rel('alg.Subject') & '{"subject_id": 1, "scan_idx": 9}');

-- A view for BI tools: typed columns, primary key in the comment, the caller's privileges.
SELECT dj.create_view('alg.session_summary', dj.aggr(dj.rel('alg.Subject'), dj.rel('alg.Session'), 'sessions = count(session_idx)', 'total = sum(duration)'));
SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'alg' AND table_name = 'session_summary' ORDER BY ordinal_position;
SELECT obj_description('alg.session_summary'::regclass);
SELECT * FROM alg.session_summary ORDER BY subject_id;
SELECT dj.create_view('alg.session_summary', dj.rel('alg.Subject'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.create_view('alg.session_summary', dj.rel('alg.Subject'), replace => true);

-- Row-level security of the base tables applies through the algebra and through views.
CREATE ROLE alg_reader;
GRANT USAGE ON SCHEMA alg, dj TO alg_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA alg TO alg_reader;
ALTER TABLE alg.subject ENABLE ROW LEVEL SECURITY;
CREATE POLICY mice_only ON alg.subject FOR SELECT TO alg_reader USING (species = 'mouse');
SET ROLE alg_reader;
SELECT dj.count(dj.rel('alg.Subject')) AS visible_subjects;
SELECT count(*) AS visible_in_view FROM alg.session_summary;
RESET ROLE;
REVOKE SELECT ON alg.scan FROM alg_reader;
SET ROLE alg_reader;
SELECT dj.count(dj.rel('alg.Subject') & dj.rel('alg.Scan'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Bad input: SQLSTATE, message, the offending fragment (DETAIL) and a hint.
SELECT dj.rel('alg.Nope');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Names of every shape the parser reads are refused as names, never a crash.
SELECT dj.rel('a.b.c.d');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.nope.Part') * dj.rel('"alg"."sub""ject"');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') & 'nope > 1';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Session') * dj.rel('alg.Other');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') * dj.proj(dj.rel('alg.Rig'), 'weight = room');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') + dj.rel('alg.Session');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') + dj.rel('alg.Subject');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.u('species') * dj.rel('alg.Subject');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') * dj.u('species');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.u('species') - dj.rel('alg.Subject');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.fetch(dj.u('species'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.proj(dj.rel('alg.Subject'), '-subject_id');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.proj(dj.rel('alg.Subject'), 'species', 'species = weight');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.proj(dj.rel('alg.Subject'), 'Bad Name = weight');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.proj(dj.rel('alg.Subject'), 'x = count(*)');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.aggr(dj.rel('alg.Session'), dj.rel('alg.Subject'), 'n = count(*)');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.aggr(dj.rel('alg.Subject'), dj.rel('alg.Session'), 'n = count(*); DROP TABLE alg.subject');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.extend(dj.rel('alg.Subject'), dj.rel('alg.Session'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.top(dj.rel('alg.Scan'), 2, 'depth; DROP TABLE alg.scan');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') & 'weight > 1 -- comment';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') & 'subject_id IN (SELECT subject_id FROM alg.session)';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') & 'pg_sleep(1) IS NULL';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject') & '{"$drop": 1}';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('alg.Subject ** alg.Session');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.rel('''weight > 1'' * alg.Subject');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT 'alg.Subject &'::dj.relation;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.fetch1(dj.rel('alg.Subject'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.fetch1(dj.rel('alg.Subject') & 'weight > 1000');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.create_view('session_summary', dj.rel('alg.Subject'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Nothing was dropped by any of the above.
SELECT count(*) AS tables_left FROM pg_tables WHERE schemaname = 'alg';

DROP SCHEMA alg CASCADE;
DROP OWNED BY alg_reader;
DROP ROLE alg_reader;
