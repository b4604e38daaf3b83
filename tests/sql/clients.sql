-- What SQL clients and BI tools read: exact values, typed rows, the algebra under any
-- search_path, views of the pipeline, and the extension's own schema kept for itself.
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS bi CASCADE;
\set SHOW_CONTEXT never
SELECT dj.declare('bi.Subject', 'manual', '# Experimental subject
subject_id : int32   # unique animal id
---
species : varchar(16)  # mouse or rat
weight : float64     # grams');
SELECT dj.declare('bi.Measure', 'manual', '-> Subject
measure_id : int16
---
x : float64
d : decimal(30,12)
e : decimal(10,3)
t : datetime(6)
u : uuid');
SELECT dj.declare('bi.Stat', 'computed', '-> Subject
---
mean_x : float64');
INSERT INTO bi.subject VALUES (1, 'mouse', 37.0), (2, 'rat', 312.5);
INSERT INTO bi.measure VALUES
  (1, 1, 216927687956430.38, 123456789012345678.123456789012, 1.500, '2024-01-31 12:34:56.789012', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
  (1, 2, 1.7976931348623157e308, -0.000000000001, 0.001, 'infinity', '00000000-0000-0000-0000-000000000000'),
  (2, 1, 'NaN', 0, -9999999.999, '-infinity', 'ffffffff-ffff-ffff-ffff-ffffffffffff'),
  (2, 2, '-Infinity', 1, 0, '1970-01-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12');

-- dj.fetch returns exactly what to_jsonb makes of each row (digits, scale, extremes, NaN).
SELECT f = to_jsonb(m) AS same, f
  FROM dj.fetch(dj.rel('bi.Measure'), 'KEY') AS f
  JOIN bi.measure m ON (f->>'subject_id')::int = m.subject_id AND (f->>'measure_id')::int = m.measure_id;
SELECT dj.fetch1(dj.rel('bi.Measure') & '{"subject_id": 1, "measure_id": 1}') = to_jsonb(m) AS same
  FROM bi.measure m WHERE subject_id = 1 AND measure_id = 1;
-- Keys written as JSON keep their digits too.
SELECT count(*) FROM dj.fetch(dj.rel('bi.Measure') & '{"e": 1.500}');
SELECT * FROM dj.key_source('bi.Stat');
-- The same rows under a name no SQL dialect reserves.
SELECT count(*) FROM dj.fetch_json(dj.rel('bi.Measure'));

-- Typed rows: a temporary view (columns typed, comments kept) or dj.query with a column list.
SELECT dj.temp_view(dj.rel('bi.Subject') * dj.rel('bi.Measure') & 'x > 0', 'positive');
SELECT subject_id, species, weight, measure_id, x, e FROM positive ORDER BY 1, 4;
SELECT a.attname, format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum)
  FROM pg_attribute a WHERE a.attrelid = 'pg_temp.positive'::regclass AND a.attnum > 0 ORDER BY a.attnum;
SELECT * FROM dj.query(dj.rel('bi.Subject'), 'KEY') AS t(subject_id int4, species varchar, weight float8);
SELECT * FROM dj.query(dj.rel('bi.Subject')) AS t(subject_id int8, species text, weight float8);
SELECT dj.temp_view(dj.rel('bi.Subject'), 'no.schema');

-- The algebra as functions of schema dj: the same under a search_path without public.
SET search_path = bi;
SELECT dj.count(dj.join(dj.rel('bi.Subject'), dj.rel('bi.Measure')));
SELECT dj.count(dj.restrict(dj.rel('bi.Subject'), 'weight > 100')),
       dj.count(dj.restrict(dj.rel('bi.Subject'), '{"subject_id": 1}'::jsonb)),
       dj.count(dj.restrict(dj.rel('bi.Subject'), ARRAY['subject_id = 1', 'subject_id = 2'])),
       dj.count(dj.restrict(dj.rel('bi.Subject'), dj.restrict(dj.rel('bi.Measure'), 'x > 1000')));
SELECT dj.count(dj.exclude(dj.rel('bi.Subject'), 'weight > 100')),
       dj.count(dj.exclude(dj.rel('bi.Subject'), dj.rel('bi.Stat')));
SELECT dj.count(dj.union(dj.proj(dj.restrict(dj.rel('bi.Subject'), 'subject_id = 1')),
                         dj.proj(dj.restrict(dj.rel('bi.Subject'), 'subject_id = 2'))));
-- The operators live in public: from another search_path, OPERATOR(public.&).
SELECT dj.count(dj.rel('bi.Subject') OPERATOR(public.&) 'weight > 100');
SELECT dj.rel('bi.Subject') & 'weight > 100';
RESET search_path;

-- The pipeline as a BI tool sees it: tables with tiers and populate state, and columns.
SELECT schema_name, class_name, tier, table_name, rows, make_module, remaining, errors
  FROM dj.pipeline_tables WHERE schema_name = 'bi' ORDER BY table_name;
SELECT class_name, position, attribute, datajoint_type, sql_type, in_key, comment, lineage
  FROM dj.pipeline_columns WHERE schema_name = 'bi' AND class_name = 'Subject' ORDER BY position;
-- Views carry their columns' comments.
SELECT dj.create_view('bi.subject_weights', dj.proj(dj.rel('bi.Subject'), 'weight', 'kg = weight / 1000'));
SELECT a.attname, col_description(a.attrelid, a.attnum)
  FROM pg_attribute a WHERE a.attrelid = 'bi.subject_weights'::regclass AND a.attnum > 0 ORDER BY a.attnum;
-- Progress of a table nobody populates is NULL, not an error; a diagram takes one name.
SELECT * FROM dj.progress('bi.Subject');
SELECT * FROM dj.progress('bi.Stat');
SELECT left(dj.diagram('bi'), 40);

-- Schema dj is the extension's: no table may be put there (a client that takes it for a
-- DataJoint schema creates none).
CREATE TABLE dj."~lineage" (table_name varchar(64));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
CREATE TABLE bi.stray (id int);
ALTER TABLE bi.stray SET SCHEMA dj;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP TABLE bi.stray;

DROP SCHEMA bi CASCADE;
DROP EXTENSION datajoint;
