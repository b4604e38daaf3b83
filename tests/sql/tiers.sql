-- Server-enforced tiers: with dj.enforce_tiers, Computed, Imported and Part tables accept writes
-- only from DataJoint's own operations. Off by default (datajoint-python writes them itself).
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS tiers CASCADE;
SELECT dj.declare('tiers.Subject', 'manual', 'subject_id : int32');
SELECT dj.declare('tiers.Stat', 'computed', E'-> Subject\n---\nv : float32');
SELECT dj.declare('tiers.Stat.Item', 'part', E'-> master\ni : int16');
INSERT INTO tiers.subject VALUES (1), (2), (3);
-- Off: anything goes.
INSERT INTO tiers.__stat VALUES (1, 0.5), (2, 0.5);
INSERT INTO tiers.__stat__item VALUES (1, 1), (2, 1);
SELECT dj.enforce_tiers('tiers');
SELECT enforce_tiers FROM dj.schema_settings WHERE schema_name = 'tiers';
\set SHOW_CONTEXT never
INSERT INTO tiers.__stat VALUES (3, 0.5);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
UPDATE tiers.__stat SET v = 1;
DELETE FROM tiers.__stat__item;
TRUNCATE tiers.__stat__item;
-- Manual tables stay writable; tables declared later are guarded too.
INSERT INTO tiers.subject VALUES (4);
SELECT dj.declare('tiers.Later', 'imported', E'-> Subject');
INSERT INTO tiers._later VALUES (1);
-- dj.delete may clear them, and leaves no opening behind.
SELECT * FROM dj.delete('tiers.Subject', 'subject_id = 1');
SELECT dj._pipeline_write_allowed('tiers.__stat'::regclass, 'DELETE');
DELETE FROM tiers.__stat;
-- The permission covers only the tables a DataJoint operation works on, with nothing from the
-- search path: a same-named function cannot ride along (lower(int) is not pg_catalog's).
CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql AS $$ INSERT INTO tiers.__stat VALUES (4, 9) RETURNING 0 $$;
SELECT * FROM dj.delete('tiers.Subject', 'lower(subject_id) = 0');
DROP FUNCTION public.lower(int);
SELECT count(*) AS untouched FROM tiers.__stat WHERE subject_id = 4;
-- Breaking part integrity is not on offer where tiers are enforced.
SELECT * FROM dj.delete('tiers.Stat.Item', part_integrity => 'ignore');
-- Parts of Manual masters are entered by hand like their masters: not guarded.
SELECT dj.declare('tiers.Visit', 'manual', E'-> Subject\nvisit : int16');
SELECT dj.declare('tiers.Visit.Note', 'part', E'-> master\nnote : int16');
INSERT INTO tiers.visit VALUES (2, 1);
INSERT INTO tiers.visit__note VALUES (2, 1, 1);
-- Only the schema's owner can switch it.
CREATE ROLE tiers_visitor;
GRANT USAGE ON SCHEMA tiers TO tiers_visitor;
SET ROLE tiers_visitor;
SELECT dj.enforce_tiers('tiers', false);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;
REVOKE USAGE ON SCHEMA tiers FROM tiers_visitor;
DROP ROLE tiers_visitor;
SELECT dj.enforce_tiers('tiers', false);
INSERT INTO tiers.__stat VALUES (3, 0.5);
SELECT dj.enforce_tiers('tiers', true) AS guarded_tables;
SELECT count(*) FROM tiers.__stat;
SELECT dj.enforce_tiers('nowhere');
