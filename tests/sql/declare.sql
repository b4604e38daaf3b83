-- dj.declare: DataJoint definitions become tables laid out as datajoint-python 2.3.5 lays them
-- out (types, :type: comments, keys, foreign keys, indexes, ~lineage).
CREATE EXTENSION IF NOT EXISTS datajoint;
\set VERBOSITY default
CREATE FUNCTION pg_temp.columns(t regclass)
RETURNS TABLE (name name, type text, nullable bool, "default" text, comment text)
LANGUAGE sql AS $$
  SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull, pg_get_expr(adbin, adrelid),
         col_description(attrelid, attnum)
  FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
  WHERE attrelid = t AND attnum > 0 AND NOT attisdropped ORDER BY attnum $$;
CREATE FUNCTION pg_temp.constraints(t regclass) RETURNS TABLE (definition text)
LANGUAGE sql AS $$ SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = t ORDER BY contype DESC, conname $$;
CREATE FUNCTION pg_temp.indexes(t regclass) RETURNS TABLE (definition text)
LANGUAGE sql AS $$ SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = t AND NOT indisprimary ORDER BY 1 $$;

-- Every tier; the schema is created on first use. Lookup contents as objects or arrays.
SELECT dj.declare('zoo.Species', 'lookup', $$
# Species we keep
species : varchar(32)    # latin name
---
legs = 4 : int8
$$, contents => '[{"species": "Mus musculus"}, ["Danio rerio", 0]]');
SELECT * FROM zoo."#species" ORDER BY 1;
SELECT obj_description('zoo."#species"'::regclass, 'pg_class') AS table_comment;
SELECT * FROM pg_temp.columns('zoo."#species"');

-- Every core type, codecs, defaults, a native type (with a NOTICE).
SELECT dj.declare('zoo.Animal', 'manual', $$
# An animal "with" quotes and 100% certainty
animal_id : int32
---
-> Species
name = "it's" : varchar(40)       # given name
code : char(4)
tag = null : uuid
big : int64
small : int16
tiny = -1 : int8
weight = 1.5 : float32
exact : float64
alive = true : bool
born = CURRENT_TIMESTAMP(3) : datetime(3)
seen = null : datetime
birthday : date
notes = null : json
raw = null : bytes
price = '9.99' : decimal(8, 2)
sex = 'U' : enum('M', 'F', 'U')
photo = null : <blob>
document = null : <attach>
stack = null : <blob@archive>
movie = null : <object@archive>
trace = null : <npy@archive>
source = null : <filepath@archive>
remarks = '' : text                # free text
$$);
SELECT * FROM pg_temp.columns('zoo.animal');
SELECT * FROM pg_temp.constraints('zoo.animal');
SELECT * FROM pg_temp.indexes('zoo.animal');
-- Enum types are schema-level and named after their values; equal value sets share one.
SELECT typname, enum_range(NULL::zoo.enum_e54fc739) FROM pg_type WHERE typname LIKE 'enum\_%' AND typnamespace = 'zoo'::regnamespace;

-- Foreign keys: renamed (proj), nullable, unique, to another schema; indexes.
SELECT dj.declare('zoo.Keeper', 'manual', 'keeper : varchar(16)');
SELECT dj.declare('lab.Session', 'manual', $$
-> zoo.Animal
session : int16
---
-> [nullable] zoo.Keeper
-> [unique] zoo.Animal.proj(twin_id='animal_id')
duration : float32
index(duration)
unique index(session, duration)
$$);
SELECT * FROM pg_temp.columns('lab.session');
SELECT * FROM pg_temp.constraints('lab.session');
SELECT * FROM pg_temp.indexes('lab.session');

-- Imported and Computed keys come from foreign keys; parts hang on their master.
SELECT dj.declare('lab.Scan', 'imported', $$
-> Session
---
depth : float32
$$);
SELECT dj.declare('lab.Activity', 'computed', $$
-> Scan
---
mean_rate : float64
$$);
SELECT dj.declare('lab.Activity.Unit', 'part', $$
-> master
unit : int32
---
rate : float64
$$);
SELECT dj.declare('lab.Pairing', 'computed', $$
-> Activity.Unit
-> Activity.Unit.proj(other_unit='unit')
---
correlation : float64
$$);
SELECT * FROM pg_temp.columns('lab.__pairing');
SELECT * FROM pg_temp.constraints('lab.__pairing');
SELECT * FROM pg_temp.indexes('lab.__pairing');

-- A singleton table: no key attributes, a hidden one instead.
SELECT dj.declare('lab.Settings', 'manual', $$
---
threshold = 0.5 : float32
$$);
SELECT * FROM pg_temp.columns('lab.settings');

-- What datajoint-python's clients read: tiers from table names, lineage of key attributes.
SELECT * FROM dj.tables('zoo');
SELECT * FROM dj.tables('lab');
SELECT table_name, attribute_name, lineage FROM lab."~lineage" ORDER BY 1, 2;

-- Errors: SQLSTATE, where, and a HINT; nothing is created.
\set SHOW_CONTEXT never
SELECT dj.declare('lab.Bad', 'manual', $$
a : int32
b int32
$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'Name : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', '_hidden : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', E'a : int32\na : int16');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : int33');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : INT32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : <object>');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : <zip>');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', $$a : enum(M, F)$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', '-> Nowhere');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', '-> [nullable] Session');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', '-> [optional] Session');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', $$-> Session.proj(x='nope')$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', $$-> Session & 'session = 1'$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a = null : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : <blob>');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'computed', E'-> Session\nframe : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', E'a : int32\nindex(b)');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', E'a : int32\nindex(lower(a))');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', E'a : int32\nunique index(a)\nunique index(a)');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', '# :typed comment');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : int32  # :typed');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', repeat('a', 64) || ' : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.' || repeat('B', 64), 'manual', 'a : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Session', 'manual', 'a : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'job', 'a : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.bad', 'manual', 'a : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Ghost.Part', 'part', 'a : int32');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', '-> master');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : int32', contents => '[[1]]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'lookup', 'a : int32', contents => '[{"b": 1}]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'lookup', 'a : int32', contents => '[[1, 2]]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Injection attempts are refused, not executed.
SELECT dj.declare('lab.Bad', 'manual', $$a = 1'; DROP SCHEMA zoo CASCADE; -- : int32$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', $$a = CURRENT_TIMESTAMP(3); DROP SCHEMA zoo : datetime$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.declare('lab.Bad', 'manual', 'a : int); DROP SCHEMA zoo CASCADE; --');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- (a comment is only ever a quoted literal: this one is stored as written)
SELECT dj.declare('lab.Bad', 'manual', 'a : int32 # x''); DROP SCHEMA zoo CASCADE; --');
SELECT col_description('lab.bad'::regclass, 1) AS stored_comment;
DROP TABLE lab.bad;
-- A failed declaration leaves nothing behind: no table, no new schema, no enum type, no lineage.
SELECT dj.declare('fresh.Thing', 'manual', $$
x : enum('p', 'q')
---
-> Nowhere
$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS leftovers FROM pg_namespace WHERE nspname = 'fresh';
SELECT count(*) AS tables_in_lab FROM pg_class WHERE relnamespace = 'lab'::regnamespace AND relkind = 'r';
SELECT count(*) FROM zoo."#species";
