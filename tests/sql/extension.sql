-- The extension installs into schema dj, reports its versions and leaves nothing behind on DROP.
DROP EXTENSION IF EXISTS datajoint;
CREATE EXTENSION datajoint;
SELECT extname, extversion ~ '^\d+\.\d+\.\d+$' AS semver, nspname AS schema, extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE extname = 'datajoint';
SELECT dj.version() ~ '^datajoint \d+\.\d+\.\d+, wasmtime 48\.0\.8$' AS version_ok;
-- The catalog skeleton.
SELECT c.relname, obj_description(c.oid, 'pg_class')
  FROM pg_class c WHERE c.relnamespace = 'dj'::regnamespace AND c.relkind = 'r' ORDER BY 1;
-- Settings, with units, and the reserved prefix.
SELECT name, setting, unit, context FROM pg_settings WHERE name LIKE 'dj.%' ORDER BY name;
SET dj.make_timout = 5;
SET dj.make_timeout = '250ms';
SHOW dj.make_timeout;
RESET dj.make_timeout;
SET dj.make_timeout = -1;
-- Functions carry comments; the internal sandbox entry point is not granted to PUBLIC.
SELECT p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL AS commented,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p WHERE p.pronamespace = 'dj'::regnamespace ORDER BY 1;
-- DROP EXTENSION removes every object it created.
DROP EXTENSION datajoint;
SELECT count(*) AS leftover_functions FROM pg_proc WHERE pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'dj');
SELECT count(*) AS leftover_tables FROM pg_class WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'dj');
-- PostgreSQL created schema dj for the control file's `schema = dj` and keeps it, empty;
-- DROP SCHEMA dj CASCADE removes extension and schema in one step.
SELECT nspname FROM pg_namespace WHERE nspname = 'dj';
-- ...and it installs again.
CREATE EXTENSION datajoint;
SELECT dj.version() IS NOT NULL AS reinstalled;
DROP SCHEMA dj CASCADE;
SELECT count(*) AS extension_left FROM pg_extension WHERE extname = 'datajoint';
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'dj';
-- A dj schema that a non-superuser created first is refused: its owner could replace the
-- extension's functions with its own.
CREATE ROLE dj_squatter;
CREATE SCHEMA dj AUTHORIZATION dj_squatter;
CREATE EXTENSION datajoint;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'datajoint';
DROP SCHEMA dj;
DROP ROLE dj_squatter;
CREATE EXTENSION datajoint;
