-- Blobs and object stores from SQL: DataJoint's <blob> serialization as JSON and back, the
-- store catalog, objects put and read through references, and what each refuses.
CREATE EXTENSION IF NOT EXISTS datajoint;
DROP SCHEMA IF EXISTS obj CASCADE;
\set SHOW_CONTEXT never

-- Blobs: what datajoint-python's blob.pack writes, seen as JSON.
SELECT dj.blob_decode('\x646a30000d000000000000f83f') AS float_1_5;
SELECT dj.blob_encode('1.5') = '\x646a30000d000000000000f83f'::bytea AS same_bytes_as_python;
SELECT dj.blob_decode(dj.blob_encode('[[1, 2, 3], [4, 5, 6]]', 'int32')) AS int32_matrix;
SELECT dj.blob_decode(dj.blob_encode('[[1, 2], [3, -4]]', 'complex128')) AS complex_vector;
SELECT dj.blob_decode(dj.blob_encode('{"name": "mouse", "weights": [21.5, 22.0], "tags": {"$set": ["a"]}, "id": {"$uuid": "12345678-1234-5678-1234-567812345678"}}')) AS structure;
SELECT dj.blob_decode(dj.blob_encode('{"$datetime": "2024-03-05T13:07:09.5"}')) AS datetime,
       dj.blob_decode(dj.blob_encode('12345678901234567890123456789')) AS big_int,
       dj.blob_decode(dj.blob_encode('"NaN"', 'float64')) AS nan;
SELECT length(dj.blob_encode(to_jsonb(array(SELECT generate_series(1, 1000))), 'float64')) < 8000 AS compressed,
       substr(dj.blob_encode(to_jsonb(array(SELECT generate_series(1, 1000))), 'float64'), 1, 6) AS header;
SELECT dj.blob_encode(NULL) IS NULL AS null_in_null_out;
SELECT * FROM dj.attach_decode(dj.attach_encode('notes.txt', 'hello'));

-- Bad blobs and documents.
SELECT dj.blob_decode('\x00');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.blob_decode('\x6d596d0041010000000000000000000010000000000600000000000000');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.blob_encode('[[1, 2], [3]]', 'float64');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.blob_encode('[300]', 'uint8');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.blob_encode('[1]', 'float16');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.attach_encode('../etc/passwd', 'x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- The embedded default store, for every role.
SELECT name, protocol, spec, owner = current_user AS owned_by_installer, has_secrets, users FROM dj.stores;
SELECT dj.store_config() -> 'default' AS default_store,
       dj.store_config() -> 'local' ->> 'location' LIKE '/%/dj_store/dj_regress' AS absolute_location;

-- Objects: put for a table's store attribute, insert the reference, read it back.
SELECT dj.declare('obj.Recording', 'manual', E'rec : int32\n---\ntrace : <blob@local>\ndoc = null : <attach@local>\nsettings = null : <blob>');
INSERT INTO obj.recording VALUES
  (1, dj.object_put('obj.Recording', 'trace', dj.blob_encode('[0.5, 1.5]', 'float64')),
      dj.object_put('obj.Recording', 'doc', 'hello', 'notes.txt'), dj.blob_encode('{"gain": 2}')),
  (2, dj.object_put('obj.Recording', 'trace', dj.blob_encode('[0.5, 1.5]', 'float64')), NULL, NULL);
SELECT rec, trace, doc FROM obj.recording ORDER BY rec;
SELECT rec, dj.blob_decode(dj.object_read(trace)) AS trace, (dj.attach_decode(dj.object_read(doc))).filename,
       dj.object_verify(trace) AS verified, dj.object_read(doc, 1, 3) AS middle, dj.blob_decode(settings) AS settings
  FROM obj.recording ORDER BY rec;
SELECT dj.object_info(doc) - 'modified' AS info FROM obj.recording WHERE rec = 1;

-- What object_put refuses.
SELECT dj.object_put('obj.Recording', 'trace', 'not a blob');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_put('obj.Recording', 'doc', 'x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_put('obj.Recording', 'doc', 'x', 'a/b');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_put('obj.Recording', 'settings', 'x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_put('obj.Recording', 'nothing', 'x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_read('{"path": "../../../etc/passwd", "store": "local"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_read('{"path": "_hash/obj/nothing", "store": "local"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_read('{"path": "x", "store": "nowhere"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.object_read('[1, 2]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- The store catalog refuses bad specs and drops of stores in use.
SELECT dj.add_store('bad', '{"protocol": "ftp", "location": "x"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.add_store('bad', '{"protocol": "file", "location": "x", "bucket": "b"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.add_store('bad-name', '{"protocol": "file", "location": "x"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.add_store('local', '{"protocol": "file", "location": "x"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.drop_store('local');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT dj.grant_store('local', 'no_such_role');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- gc: the rows reference both objects, so nothing is proposed for collection.
SELECT count(*) FILTER (WHERE key LIKE '_hash/obj/%' AND action NOT LIKE 'kept%') AS would_collect FROM dj.gc('local', true, '0');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM dj.gc('local');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;
DROP SCHEMA obj CASCADE;
