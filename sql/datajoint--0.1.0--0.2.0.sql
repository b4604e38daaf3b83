-- datajoint 0.1.0 -> 0.2.0 (ALTER EXTENSION datajoint UPDATE), with data in place.
--   * Make functions are kept by content: dj.module_versions holds every version still named or
--     bound; dj.modules maps names to versions; dj.makes binds a table to a version (sha256), so a
--     table runs exactly the code its owner chose. Only the extension writes these tables.
--   * Compiled code is sealed by the server; rows of 0.1.0 (unsealed, another engine) go.
--   * dj.register_module is no longer executable by PUBLIC; dj.unregister_module is new.
--   * The tier guard covers CREATE TABLE AS, SELECT INTO and ALTER TABLE (RENAME, SET SCHEMA);
--     no table may be put in schema dj.
--   * For clients and BI tools: dj.fetch_json, dj.query, dj.temp_view, dj.join / union / restrict /
--     exclude, the views dj.pipeline_tables and dj.pipeline_columns, dj.diagram(text).
--   * The worker pool and DataJoint's job queue: dj.populate(..., workers => n), dj.populate_async,
--     dj.wait, dj.cancel, the view dj.runs (dj._runs keeps the runs that ended), dj.jobs,
--     dj.jobs_refresh, dj.jobs_ignore, dj.jobs_clear_errors, dj.jobs_reserve; under
--     dj.enforce_tiers a session holding job reservations may write those keys' rows.
\echo Use "ALTER EXTENSION datajoint UPDATE TO '0.2.0'" to load this file. \quit

-- Module versions, by content (as in sql/catalog.sql).
CREATE TABLE dj.module_versions (
    sha256        text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    component     bytea NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by name NOT NULL,
    CONSTRAINT module_versions_content CHECK (sha256 = pg_catalog.encode(pg_catalog.sha256(component), 'hex'))
);
COMMENT ON TABLE dj.module_versions IS 'Every version of a make function still named or bound, by content (sha256, what computed rows record as _job_version).';
INSERT INTO dj.module_versions (sha256, component, registered_at, registered_by)
SELECT sha256, component, registered_at, registered_by FROM dj.modules;

-- A table's make is bound to the version its module name held at the upgrade.
ALTER TABLE dj.makes DROP CONSTRAINT makes_module_fkey;
ALTER TABLE dj.makes ADD COLUMN sha256 text;
UPDATE dj.makes k SET sha256 = m.sha256 FROM dj.modules m WHERE m.name OPERATOR(pg_catalog.=) k.module;
ALTER TABLE dj.makes ALTER COLUMN sha256 SET NOT NULL;
ALTER TABLE dj.makes ADD CONSTRAINT makes_sha256_fkey FOREIGN KEY (sha256) REFERENCES dj.module_versions (sha256);
DROP POLICY owner_writes ON dj.makes;
ALTER TABLE dj.makes ADD COLUMN fresh_instance boolean NOT NULL DEFAULT false;
COMMENT ON TABLE dj.makes IS 'The make function of each Computed or Imported table: the module version (sha256) its owner bound with dj.set_make, and whether each key gets a fresh instance of it (fresh_instance).';

-- Names point at versions; their bytes live in the versions.
ALTER TABLE dj.modules DROP COLUMN component;
ALTER TABLE dj.modules ADD CONSTRAINT modules_sha256_fkey FOREIGN KEY (sha256) REFERENCES dj.module_versions (sha256);
DROP POLICY register ON dj.modules;
DROP POLICY replace ON dj.modules;
DROP POLICY remove ON dj.modules;
COMMENT ON TABLE dj.modules IS 'Make-function names registered with dj.register_module and the version (sha256) each holds now.';

REVOKE INSERT, UPDATE, DELETE ON dj.modules, dj.makes FROM PUBLIC;
GRANT SELECT ON dj.module_versions TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('dj.module_versions', '');

-- Sealed machine code. 0.1.0's rows carry no seal and were compiled under another engine.
DELETE FROM dj.module_artifacts;
ALTER TABLE dj.module_artifacts ADD COLUMN seal bytea NOT NULL;
ALTER TABLE dj.module_artifacts
    ADD CONSTRAINT module_artifacts_sha256_fkey FOREIGN KEY (sha256) REFERENCES dj.module_versions (sha256) ON DELETE CASCADE;
COMMENT ON TABLE dj.module_artifacts IS 'Compiled code of module versions, keyed by module hash and engine fingerprint, sealed by the server.';

CREATE FUNCTION dj._collect_module_versions() RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $collect$
    -- Versions another transaction is binding right now (it holds a key-share lock) are skipped.
    DELETE FROM dj.module_versions v WHERE v.sha256 IN (
        SELECT u.sha256 FROM dj.module_versions u
         WHERE NOT EXISTS (SELECT FROM dj.modules m WHERE m.sha256 OPERATOR(pg_catalog.=) u.sha256)
           AND NOT EXISTS (SELECT FROM dj.makes k WHERE k.sha256 OPERATOR(pg_catalog.=) u.sha256)
           FOR UPDATE SKIP LOCKED);
$collect$;
REVOKE ALL ON FUNCTION dj._collect_module_versions() FROM PUBLIC;
COMMENT ON FUNCTION dj._collect_module_versions() IS 'Internal: removes module versions no name and no table uses, with their compiled code.';

CREATE OR REPLACE FUNCTION dj._forget_dropped_tables() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $forget$
BEGIN
    DELETE FROM dj.makes m
     USING pg_event_trigger_dropped_objects() d
     WHERE d.object_type OPERATOR(pg_catalog.=) 'table' AND d.schema_name OPERATOR(pg_catalog.=) m.schema_name
       AND d.object_name OPERATOR(pg_catalog.=) m.table_name;
    PERFORM dj._collect_module_versions();
    DELETE FROM dj._auto_populate a
     USING pg_event_trigger_dropped_objects() d
     WHERE d.object_type OPERATOR(pg_catalog.=) 'table' AND d.schema_name OPERATOR(pg_catalog.=) a.schema_name
       AND d.object_name OPERATOR(pg_catalog.=) a.table_name;
END
$forget$;

-- Who may add code: roles a superuser grants EXECUTE to.
REVOKE ALL ON FUNCTION dj.register_module(text, bytea) FROM PUBLIC;
COMMENT ON FUNCTION dj.register_module(text, bytea) IS 'Registers a make function: a WebAssembly component of world datajoint:make/make; compiles it once and returns its sha256. Not executable by PUBLIC: grant EXECUTE to the roles that may add code.';
COMMENT ON FUNCTION dj.drop(text, text) IS
  'Drop a table and every table downstream of it, parts with their master, with their ~lineage rows, jobs tables and unused enum types. Returns the dropped tables.';

CREATE FUNCTION dj."unregister_module"(
	"name" TEXT /* &str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'unregister_module_wrapper';
REVOKE ALL ON FUNCTION dj.unregister_module(text) FROM PUBLIC;
COMMENT ON FUNCTION dj.unregister_module(text) IS 'Removes a module name (registrant only); tables bound to one of its versions keep running it.';

-- The tier guard for every way a table comes to have a tier name in an enforcing schema.
CREATE FUNCTION dj."_names_table"("command" pg_ddl_command) RETURNS bool IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'names_table_wrapper';
COMMENT ON FUNCTION dj._names_table(pg_ddl_command) IS 'Internal: whether a DDL command creates a table, renames it or moves it to another schema.';
DROP EVENT TRIGGER dj_guard_new_tables;
CREATE OR REPLACE FUNCTION dj._guard_new_tables() RETURNS event_trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $guard$
DECLARE
    created record;
    has_rows boolean;
BEGIN
    -- Every way a table comes to have a tier name in an enforcing schema: CREATE TABLE, CREATE
    -- TABLE AS / SELECT INTO, and ALTER TABLE (RENAME TO, SET SCHEMA).
    FOR created IN
        SELECT c.objid, c.schema_name, c.command_tag, c.in_extension FROM pg_event_trigger_ddl_commands() c
        WHERE c.object_type OPERATOR(pg_catalog.=) 'table' AND c.schema_name IS NOT NULL AND dj._names_table(c.command)
    LOOP
        -- Schema dj is the extension's: a table put there (by a client that takes it for a
        -- DataJoint schema, say) would outlive DROP EXTENSION.
        IF created.schema_name OPERATOR(pg_catalog.=) 'dj' AND NOT created.in_extension THEN
            RAISE EXCEPTION 'schema dj belongs to the datajoint extension: % may not put table % there',
                    created.command_tag, created.objid::pg_catalog.regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Declare pipeline tables in a schema of their own (dj.declare(''lab.Session'', ...) creates it).';
        END IF;
        -- (Nested IFs: SQL does not promise to evaluate the operands of AND in order.)
        IF EXISTS (SELECT FROM dj.schema_settings s
                   WHERE s.schema_name OPERATOR(pg_catalog.=) created.schema_name AND s.enforce_tiers) THEN
            IF dj._guard_table(created.objid) AND created.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
                -- Its rows were written directly, as the guard now refuses.
                EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', created.objid::pg_catalog.regclass) INTO has_rows;
                IF has_rows THEN
                    RAISE EXCEPTION '% cannot fill %: the schema enforces DataJoint tiers', created.command_tag, created.objid::pg_catalog.regclass
                        USING ERRCODE = 'insufficient_privilege',
                              HINT = 'Computed, Imported and Part tables are filled by dj.populate; create it WITH NO DATA, or declare it with dj.declare.';
                END IF;
            END IF;
        END IF;
    END LOOP;
END
$guard$;
COMMENT ON FUNCTION dj._guard_new_tables() IS 'Event trigger: guards tables that come to have a tier name in a tier-enforcing schema (CREATE TABLE, CREATE TABLE AS, SELECT INTO, ALTER TABLE RENAME / SET SCHEMA), whoever runs the command; refuses tables in schema dj.';
CREATE EVENT TRIGGER dj_guard_new_tables ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION dj._guard_new_tables();

-- Clients and BI tools: exact rows under a name no dialect reserves, typed reads, the operators as
-- functions of schema dj, views of the pipeline's tables and columns, a diagram of one name.
CREATE FUNCTION dj."fetch_json"(
	"rel" dj.relation,
	"order_by" TEXT DEFAULT NULL,
	"limit" bigint DEFAULT NULL,
	"offset" bigint DEFAULT 0
) RETURNS SETOF jsonb
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'fetch_json_wrapper';
CREATE FUNCTION dj."_query_sql"(
	"rel" dj.relation,
	"order_by" TEXT DEFAULT NULL,
	"limit" bigint DEFAULT NULL,
	"offset" bigint DEFAULT 0
) RETURNS TEXT
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'query_sql_wrapper';
CREATE FUNCTION dj."temp_view"(
	"rel" dj.relation,
	"name" TEXT DEFAULT 'dj_result'
) RETURNS TEXT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'temp_view_wrapper';
CREATE FUNCTION dj."_pipeline_tables"() RETURNS TABLE (
	"schema_name" TEXT,
	"class_name" TEXT,
	"tier" TEXT,
	"table_name" TEXT,
	"rows" bigint,
	"make_module" TEXT,
	"make_sha256" TEXT,
	"remaining" bigint,
	"errors" bigint,
	"last_populated" timestamp
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pipeline_tables_wrapper';
CREATE FUNCTION dj."diagram"(
	"item" TEXT,
	"format" TEXT DEFAULT 'mermaid'
) RETURNS TEXT
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diagram_one_wrapper';
CREATE FUNCTION dj."_pipeline_columns"() RETURNS TABLE (
	"schema_name" TEXT,
	"class_name" TEXT,
	"table_name" TEXT,
	"position" INT,
	"attribute" TEXT,
	"datajoint_type" TEXT,
	"sql_type" TEXT,
	"in_key" bool,
	"nullable" bool,
	"default_value" TEXT,
	"comment" TEXT,
	"lineage" TEXT,
	"hidden" bool
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pipeline_columns_wrapper';

COMMENT ON FUNCTION dj.fetch_json(dj.relation, text, bigint, bigint) IS 'dj.fetch under a name no SQL dialect reserves (for BI tools): the rows as JSON objects, exactly as to_jsonb makes them.';
COMMENT ON FUNCTION dj._query_sql(dj.relation, text, bigint, bigint) IS 'Internal: the typed query dj.query runs.';
CREATE FUNCTION dj.query(rel dj.relation, order_by text DEFAULT NULL, "limit" bigint DEFAULT NULL, "offset" bigint DEFAULT 0)
    RETURNS SETOF record LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $query$
BEGIN
    RETURN QUERY EXECUTE dj._query_sql(rel, order_by, "limit", "offset");
END
$query$;
COMMENT ON FUNCTION dj.query(dj.relation, text, bigint, bigint) IS 'The rows of a relation as typed columns: SELECT * FROM dj.query(rel) AS t(subject_id int4, ...), the column list matching dj.heading.';
COMMENT ON FUNCTION dj.temp_view(dj.relation, text) IS 'A temporary view (this session) of a relation, typed columns and their comments: SELECT * FROM name afterwards. Returns the name.';

-- The operators as functions of schema dj: they work under any search_path (a BI tool that sets
-- it to one schema), and in SQL a parser of another dialect reads.
CREATE FUNCTION dj."join"(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_join($1, $2)';
CREATE FUNCTION dj."union"(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_union($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, text) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_text($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, jsonb) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_jsonb($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, text[]) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_list($1, $2)';
CREATE FUNCTION dj.restrict(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_restrict_jsonb($1, dj.relation_condition($2))';
CREATE FUNCTION dj.exclude(dj.relation, text) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_text($1, $2)';
CREATE FUNCTION dj.exclude(dj.relation, jsonb) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_jsonb($1, $2)';
CREATE FUNCTION dj.exclude(dj.relation, text[]) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_list($1, $2)';
CREATE FUNCTION dj.exclude(dj.relation, dj.relation) RETURNS dj.relation
    LANGUAGE sql STABLE PARALLEL SAFE STRICT AS 'SELECT dj.rel_exclude_jsonb($1, dj.relation_condition($2))';
COMMENT ON FUNCTION dj."join"(dj.relation, dj.relation) IS 'Join (the * operator), under any search_path.';
COMMENT ON FUNCTION dj."union"(dj.relation, dj.relation) IS 'Union (the + operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, text) IS 'Restriction by an SQL condition or a key as JSON text (the & operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, jsonb) IS 'Restriction by a key, keys or JSON conditions (the & operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, text[]) IS 'Restriction by any of several SQL conditions (the & operator), under any search_path.';
COMMENT ON FUNCTION dj.restrict(dj.relation, dj.relation) IS 'Semijoin (the & operator with a relation), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, text) IS 'Antirestriction by an SQL condition or a key as JSON text (the - operator), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, jsonb) IS 'Antirestriction by a key, keys or JSON conditions (the - operator), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, text[]) IS 'Antirestriction by several SQL conditions, none of which may hold (the - operator), under any search_path.';
COMMENT ON FUNCTION dj.exclude(dj.relation, dj.relation) IS 'Antijoin (the - operator with a relation), under any search_path.';
COMMENT ON FUNCTION dj.relation_out(dj.relation) IS 'Output of dj.relation: the expression''s text.';

COMMENT ON FUNCTION dj.progress(text, text) IS 'How many keys of a Computed or Imported table remain, of how many (NULL for other tiers).';
COMMENT ON FUNCTION dj._pipeline_tables() IS 'Internal: the rows of the view dj.pipeline_tables.';
CREATE VIEW dj.pipeline_tables WITH (security_invoker = true) AS SELECT * FROM dj._pipeline_tables();
COMMENT ON VIEW dj.pipeline_tables IS 'Every DataJoint table: schema, class, tier, SQL name, rows, make function (module name and sha256), keys remaining to populate, failed keys (in its jobs table), last populated (newest _job_start_time). NULL where the querying role may not read.';
GRANT SELECT ON dj.pipeline_tables TO PUBLIC;

COMMENT ON FUNCTION dj.diagram(text, text) IS 'A diagram of one schema or table (see dj.diagram(text[], text)).';
COMMENT ON FUNCTION dj._pipeline_columns() IS 'Internal: the rows of the view dj.pipeline_columns.';
CREATE VIEW dj.pipeline_columns WITH (security_invoker = true) AS SELECT * FROM dj._pipeline_columns();
COMMENT ON VIEW dj.pipeline_columns IS 'Every attribute of every DataJoint table the querying role may see: DataJoint type, SQL type, key, nullability, default, comment (without the :type: prefix), lineage, hidden.';
GRANT SELECT ON dj.pipeline_columns TO PUBLIC;

-- The worker pool and the job queue.
-- Populate runs in the worker pool, as they end (dj.runs adds the runs under way, from shared
-- memory). Written only by the extension's workers; read through dj.runs.
CREATE TABLE dj._runs (
    id          bigint PRIMARY KEY,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    role_name   name NOT NULL,
    workers     integer NOT NULL,
    state       text NOT NULL,
    started     timestamptz NOT NULL,
    finished    timestamptz,
    done        bigint NOT NULL DEFAULT 0,
    errors      bigint NOT NULL DEFAULT 0,
    remaining   bigint,
    last_error  text,
    restriction text,
    pipeline    bigint,  -- the first table's run of a dj.populate_all, for each of its tables
    auto        boolean NOT NULL DEFAULT false  -- a run of dj.auto_populate
);
CREATE SEQUENCE dj._runs_id_seq OWNED BY dj._runs.id;
REVOKE ALL ON dj._runs, dj._runs_id_seq FROM PUBLIC;
COMMENT ON TABLE dj._runs IS 'Internal: populate runs of the worker pool, written by its workers; read through dj.runs.';

-- Populate on insert (dj.auto_populate): the tables whose key parents' inserts queue their keys,
-- the role their makes run as and what their runs ask for. Written only by the extension.
CREATE TABLE dj._auto_populate (
    schema_name       text NOT NULL,
    table_name        text NOT NULL,
    role_name         name NOT NULL,
    workers           integer NOT NULL DEFAULT 1,
    priority          integer NOT NULL DEFAULT 5,
    retries           integer NOT NULL DEFAULT 0,
    make_timeout      integer NOT NULL,
    make_fuel         integer NOT NULL,
    make_memory_limit integer NOT NULL,
    enabled           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    every             interval,     -- the schedule's interval (NULL: none)
    scheduled         timestamptz,  -- when the schedule last refreshed the queue
    PRIMARY KEY (schema_name, table_name)
);
REVOKE ALL ON dj._auto_populate FROM PUBLIC;
GRANT SELECT ON dj._auto_populate TO PUBLIC;
COMMENT ON TABLE dj._auto_populate IS 'Internal: the auto-populated tables (dj.auto_populate), written by the extension; read through dj.auto_populated.';
SELECT pg_catalog.pg_extension_config_dump('dj._auto_populate', '');
CREATE VIEW dj.auto_populated AS
SELECT schema_name, table_name, role_name, workers, priority, retries, every, scheduled, enabled FROM dj._auto_populate;
GRANT SELECT ON dj.auto_populated TO PUBLIC;
COMMENT ON VIEW dj.auto_populated IS 'The auto-populated tables (dj.auto_populate): the role their makes run as, the workers, priority and retries of their runs, their schedule (every) and when it last refreshed the queue, since when.';
DROP FUNCTION dj.populate(text, text, bigint, boolean, text, boolean);
CREATE FUNCTION dj."populate"(
	"table" TEXT, /* & str */
	"restriction" TEXT DEFAULT NULL, /* Option < & str > */
	"max_calls" bigint DEFAULT NULL, /* Option < i64 > */
	"suppress_errors" bool DEFAULT false, /* bool */
	"order" TEXT DEFAULT 'original', /* & str */
	"recompute_stale" bool DEFAULT false, /* bool */
	"workers" INT DEFAULT NULL /* Option < i32 > */
) RETURNS TABLE (
	"done" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"remaining" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'populate_wrapper';
CREATE FUNCTION dj."populate_all"(
	"items" TEXT[], /* Vec < String > */
	"suppress_errors" bool DEFAULT false, /* bool */
	"order" TEXT DEFAULT 'original', /* & str */
	"workers" INT DEFAULT 1, /* i32 */
	"retries" INT DEFAULT 0, /* i32 */
	"priority" INT DEFAULT 5 /* i32 */
) RETURNS TABLE (
	"table_name" TEXT,  /* String */
	"state" TEXT,  /* String */
	"done" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"remaining" bigint  /* Option < i64 > */
)
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'populate_all_wrapper';
CREATE FUNCTION dj."populate_all_async"(
	"items" TEXT[], /* Vec < String > */
	"suppress_errors" bool DEFAULT false, /* bool */
	"order" TEXT DEFAULT 'original', /* & str */
	"workers" INT DEFAULT 1, /* i32 */
	"retries" INT DEFAULT 0, /* i32 */
	"priority" INT DEFAULT 5 /* i32 */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'populate_all_async_wrapper';
CREATE FUNCTION dj."populate_async"(
	"table" TEXT, /* & str */
	"restriction" TEXT DEFAULT NULL, /* Option < & str > */
	"max_calls" bigint DEFAULT NULL, /* Option < i64 > */
	"suppress_errors" bool DEFAULT false, /* bool */
	"order" TEXT DEFAULT 'original', /* & str */
	"workers" INT DEFAULT 1, /* i32 */
	"retries" INT DEFAULT 0, /* i32 */
	"priority" INT DEFAULT 5 /* i32 */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'populate_async_wrapper';
CREATE FUNCTION dj."wait"(
	"run" bigint /* i64 */
) RETURNS TABLE (
	"state" TEXT,  /* String */
	"done" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"remaining" bigint,  /* Option < i64 > */
	"last_error" TEXT  /* Option < String > */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wait_wrapper';
CREATE FUNCTION dj."cancel"(
	"run" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cancel_wrapper';
CREATE FUNCTION dj."_live_runs"() RETURNS TABLE (
	"id" bigint,  /* i64 */
	"target" oid,  /* pg_sys :: Oid */
	"role" oid,  /* pg_sys :: Oid */
	"workers" INT,  /* i32 */
	"state" TEXT,  /* String */
	"started" double precision,  /* f64 */
	"finished" double precision,  /* Option < f64 > */
	"done" bigint,  /* i64 */
	"errors" bigint,  /* i64 */
	"remaining" bigint,  /* Option < i64 > */
	"last_error" TEXT,  /* Option < String > */
	"pipeline" bigint,  /* Option < i64 > */
	"auto" bool  /* bool */
)
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'live_runs_wrapper';
CREATE FUNCTION dj."jobs"(
	"table" TEXT /* & str */
) RETURNS TABLE (
	"key" jsonb,  /* JsonB */
	"status" TEXT,  /* String */
	"priority" bigint,  /* i64 */
	"created_time" timestamp,  /* Option < Timestamp > */
	"scheduled_time" timestamp,  /* Option < Timestamp > */
	"reserved_time" timestamp,  /* Option < Timestamp > */
	"completed_time" timestamp,  /* Option < Timestamp > */
	"duration" double precision,  /* Option < f64 > */
	"error_message" TEXT,  /* String */
	"user_name" TEXT,  /* String */
	"host" TEXT,  /* String */
	"pid" INT,  /* i32 */
	"connection_id" bigint,  /* i64 */
	"version" TEXT  /* String */
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'jobs_wrapper';
CREATE FUNCTION dj."jobs_refresh"(
	"table" TEXT, /* & str */
	"restriction" TEXT DEFAULT NULL, /* Option < & str > */
	"priority" INT DEFAULT 5, /* i32 */
	"delay" double precision DEFAULT 0.0 /* f64 */
) RETURNS TABLE (
	"added" bigint,  /* i64 */
	"released" bigint,  /* i64 */
	"removed" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'jobs_refresh_wrapper';
CREATE FUNCTION dj."jobs_ignore"(
	"table" TEXT, /* & str */
	"restriction" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'jobs_ignore_wrapper';
CREATE FUNCTION dj."jobs_clear_errors"(
	"table" TEXT, /* & str */
	"restriction" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'jobs_clear_errors_wrapper';
CREATE FUNCTION dj."jobs_reserve"(
	"table" TEXT, /* & str */
	"restriction" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* Option < JsonB > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'jobs_reserve_wrapper';
COMMENT ON FUNCTION dj.populate(text, text, bigint, boolean, text, boolean, integer) IS 'Runs the table''s make function once per missing key as the calling role: in this session, one subtransaction per key, or with workers => n in the worker pool, one transaction per key, waited for; returns done, errors, remaining.';
CREATE VIEW dj.runs WITH (security_barrier = true) AS
SELECT coalesce(l.id, r.id) AS id,
       CASE WHEN r.id IS NULL THEN l.target::pg_catalog.regclass::pg_catalog.text
            ELSE pg_catalog.format('%I.%I', r.schema_name, r.table_name) END AS table_name,
       coalesce(r.role_name, pg_catalog.pg_get_userbyid(l.role)) AS role_name,
       coalesce(l.workers, r.workers) AS workers,
       coalesce(l.state, CASE WHEN r.state OPERATOR(pg_catalog.=) ANY ('{starting,running}') THEN 'interrupted' ELSE r.state END) AS state,
       coalesce(r.started, pg_catalog.to_timestamp(l.started)) AS started,
       coalesce(pg_catalog.to_timestamp(l.finished), r.finished) AS finished,
       coalesce(l.done, r.done) AS done,
       coalesce(l.errors, r.errors) AS errors,
       coalesce(l.remaining, r.remaining) AS remaining,
       coalesce(l.last_error, r.last_error) AS last_error,
       coalesce(l.pipeline, r.pipeline) AS pipeline,
       coalesce(l.auto, r.auto) AS auto
  FROM dj._runs r FULL JOIN dj._live_runs() l ON l.id OPERATOR(pg_catalog.=) r.id
 WHERE CASE WHEN coalesce(r.role_name, pg_catalog.pg_get_userbyid(l.role)) OPERATOR(pg_catalog.=) ANY (SELECT rolname FROM pg_catalog.pg_roles)
            THEN pg_catalog.pg_has_role(coalesce(r.role_name, pg_catalog.pg_get_userbyid(l.role)), 'USAGE')
            ELSE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER) END;
COMMENT ON VIEW dj.runs IS 'Populate runs in the worker pool (of the roles you are a member of): table, role, workers, state (starting, running, done, failed, cancelled, interrupted), started, finished, keys done, failed and remaining, last error, the pipeline (dj.populate_all) a run is part of, and whether it is an auto populate''s (dj.auto_populate).';
GRANT SELECT ON dj.runs TO PUBLIC;
COMMENT ON FUNCTION dj._live_runs() IS 'Internal: the runs in shared memory (of the roles you are a member of), behind the view dj.runs.';
COMMENT ON FUNCTION dj.populate_async(text, text, bigint, boolean, text, integer, integer, integer) IS 'Starts a populate run in the worker pool and returns its id; the run goes on after the session ends (dj.runs, dj.wait, dj.cancel).';
COMMENT ON FUNCTION dj.populate_all(text[], boolean, text, integer, integer, integer) IS 'Populates every Computed and Imported table of the named schemas and tables in dependency order in the worker pool, overlapping tables (a key is taken once its upstream rows are there), and waits: each table''s run as it ended.';
COMMENT ON FUNCTION dj.populate_all_async(text[], boolean, text, integer, integer, integer) IS 'Starts dj.populate_all and returns the pipeline''s id (its first table''s run): dj.runs shows a row per table; dj.wait and dj.cancel take the id.';
COMMENT ON FUNCTION dj.wait(bigint) IS 'Waits until a run ends; returns its state, keys done, failed and remaining, last error.';
COMMENT ON FUNCTION dj.cancel(bigint) IS 'Stops a run: no worker takes another key, running guests stop, their keys go back to pending.';
COMMENT ON FUNCTION dj.jobs(text) IS 'The rows of a table''s jobs table (datajoint-python''s ~~name), keys as jsonb.';
COMMENT ON FUNCTION dj.jobs_refresh(text, text, integer, double precision) IS 'Brings a jobs table up to date: orphaned reservations (their process is gone) back to pending, missing keys added as pending, keys that left the key source removed.';
COMMENT ON FUNCTION dj.jobs_ignore(text, text) IS 'Marks missing keys ignore: no populate takes them.';
COMMENT ON FUNCTION dj.jobs_clear_errors(text, text) IS 'Deletes error rows so the next populate or refresh queues those keys again.';
COMMENT ON FUNCTION dj.jobs_reserve(text, text) IS 'Reserves the next due pending key for this session (as a pool worker does) and returns it, or NULL.';

-- Under dj.enforce_tiers, a session holding job reservations may insert and update the rows of
-- those keys (datajoint-python's populate(reserve_jobs=True)): row triggers check every key.
CREATE FUNCTION dj."_holds_reservation"(
	"table" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'holds_reservation_wrapper';
CREATE FUNCTION dj."_reserved_rows_sql"(
	"table" oid, /* pg_sys :: Oid */
	"rows" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reserved_rows_sql_wrapper';
CREATE OR REPLACE FUNCTION dj._tier_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
BEGIN
    IF NOT dj._pipeline_write_allowed(TG_RELID, TG_OP) THEN
        -- A session holding job reservations (datajoint-python's populate(reserve_jobs=True))
        -- may insert and update; the row triggers then check that it holds every row's key.
        IF TG_OP OPERATOR(pg_catalog.=) ANY ('{INSERT,UPDATE}') THEN
            IF dj._holds_reservation(TG_RELID) THEN
                RETURN NULL;
            END IF;
        END IF;
        RAISE EXCEPTION '% on %.% is not allowed: the schema enforces DataJoint tiers', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Computed, Imported and Part tables are written by dj.populate and cleared with dj.delete (or by a session holding the key''s reservation in the jobs table). The schema owner can turn this off with dj.enforce_tiers(schema, false).';
    END IF;
    RETURN NULL;
END
$guard$;
COMMENT ON FUNCTION dj._tier_guard() IS 'Trigger of tier-enforcing schemas: refuses direct writes to Computed, Imported and Part tables, but inserts and updates of a session holding job reservations (checked row by row).';
-- The second trigger: after an insert let through for a session's reservations, every row's key
-- must be one it holds. The query it runs is built from catalog names, all qualified; the
-- transition table shadows any relation of the same name.
CREATE FUNCTION dj._tier_guard_rows() RETURNS trigger LANGUAGE plpgsql AS $guard$
DECLARE
    reserved boolean;
BEGIN
    IF dj._pipeline_write_allowed(TG_RELID, TG_OP) THEN
        RETURN NULL;
    END IF;
    EXECUTE dj._reserved_rows_sql(TG_RELID, 'dj_new_rows') INTO reserved;
    IF reserved AND TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        EXECUTE dj._reserved_rows_sql(TG_RELID, 'dj_old_rows') INTO reserved;
    END IF;
    IF reserved IS NOT TRUE THEN
        RAISE EXCEPTION '% on %.% is not allowed: the schema enforces DataJoint tiers and this session does not hold the reservation of every key written', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Reserve the key in the table''s jobs table first (datajoint-python''s populate(reserve_jobs=True) does), or let dj.populate make it.';
    END IF;
    RETURN NULL;
END
$guard$;
COMMENT ON FUNCTION dj._tier_guard_rows() IS 'Trigger of tier-enforcing schemas: an insert or update let through for a session''s job reservations may write only keys that session reserved.';
COMMENT ON FUNCTION dj._holds_reservation(oid) IS 'Internal: whether this session holds a reservation in the jobs table of the table''s master (and the table checks inserted rows against them).';
COMMENT ON FUNCTION dj._reserved_rows_sql(oid, text) IS 'Internal: the query by which the row guard checks inserted keys against this session''s reservations.';
-- Tables already guarded get the row triggers.
SELECT dj._guard_table(c.oid) FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN dj.schema_settings s ON s.schema_name OPERATOR(pg_catalog.=) n.nspname AND s.enforce_tiers
 WHERE c.relkind OPERATOR(pg_catalog.=) 'r';

-- Populate on insert.
CREATE FUNCTION dj."auto_populate"(
	"table" TEXT, /* & str */
	"enabled" bool DEFAULT true, /* bool */
	"workers" INT DEFAULT 1, /* i32 */
	"priority" INT DEFAULT 5, /* i32 */
	"retries" INT DEFAULT 0, /* i32 */
	"every" interval DEFAULT NULL /* Option < pgrx :: datum :: Interval > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'auto_populate_wrapper';
CREATE FUNCTION dj."_auto_populate_trigger"() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'auto_populate_trigger_wrapper';
COMMENT ON FUNCTION dj.auto_populate(text, boolean, integer, integer, integer, interval) IS 'Populate on insert: with enabled (the default), inserts into the table''s key parents queue the keys they complete as pending jobs in the inserting transaction and the worker pool makes them after its commit, as the caller; deleted parent rows drop their queued keys; with every, the queue is also refreshed on that schedule (missing keys queued, failed keys tried again). Queues the keys missing now and returns how many (0 when turning it off).';
COMMENT ON FUNCTION dj._auto_populate_trigger() IS 'Internal: the trigger dj.auto_populate puts on a table''s key parents (arguments: the table''s schema and name).';

-- Object stores.-- Object stores (dj.add_store): where <blob@store>, <attach@store> and the other store codecs keep
-- their objects. The spec has datajoint-python's fields (dj.store_config prints the client's
-- block); S3 keys are kept in secrets, which no role but the extension's owner can read. Written
-- only by the extension, after checking the caller may (a superuser or a member of
-- pg_write_server_files: a store makes the server write files or call out to a service).
CREATE TABLE dj._stores (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$'),
    spec       jsonb NOT NULL,
    secrets    jsonb,
    owner      name NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON dj._stores FROM PUBLIC;
COMMENT ON TABLE dj._stores IS 'Internal: the object stores (dj.add_store), their specs and secrets; read through dj.stores (no secrets).';
-- Who may use a store besides its owner (dj.grant_store); grantee 0 is PUBLIC.
CREATE TABLE dj._store_grants (
    store   text NOT NULL REFERENCES dj._stores (name) ON DELETE CASCADE,
    grantee oid NOT NULL,
    PRIMARY KEY (store, grantee)
);
REVOKE ALL ON dj._store_grants FROM PUBLIC;
COMMENT ON TABLE dj._store_grants IS 'Internal: the roles a store is granted to (dj.grant_store); 0 stands for PUBLIC.';
-- The embedded default: a file store under the data directory, for every role.
INSERT INTO dj._stores (name, spec, owner)
VALUES ('local', '{"protocol": "file", "location": "dj_store", "token_length": 8, "hash_prefix": "_hash", "schema_prefix": "_schema"}', pg_catalog.current_user());
INSERT INTO dj._store_grants VALUES ('local', 0);
SELECT pg_catalog.pg_extension_config_dump('dj._stores', 'WHERE name OPERATOR(pg_catalog.<>) ''local''');
SELECT pg_catalog.pg_extension_config_dump('dj._store_grants', 'WHERE NOT (store OPERATOR(pg_catalog.=) ''local'' AND grantee OPERATOR(pg_catalog.=) 0)');
CREATE VIEW dj.stores AS
SELECT s.name, s.spec OPERATOR(pg_catalog.->>) 'protocol' AS protocol, s.spec, s.owner,
       s.secrets IS NOT NULL AS has_secrets,
       ARRAY(SELECT CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'::pg_catalog.name
                         ELSE (SELECT r.rolname FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) g.grantee) END
               FROM dj._store_grants g WHERE g.store OPERATOR(pg_catalog.=) s.name ORDER BY 1) AS users,
       s.created_at
  FROM dj._stores s;
GRANT SELECT ON dj.stores TO PUBLIC;
COMMENT ON VIEW dj.stores IS 'The object stores: name, protocol, spec (datajoint-python''s fields, no secrets), owner, whether secrets are set, the roles it is granted to.';

-- Blobs, stores and objects.
CREATE FUNCTION dj."add_store"(
	"name" TEXT, /* & str */
	"spec" jsonb, /* JsonB */
	"replace" bool DEFAULT false /* bool */
) RETURNS jsonb /* JsonB */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_store_wrapper';
CREATE FUNCTION dj."attach_decode"(
	"attachment" bytea /* & [u8] */
) RETURNS TABLE (
	"filename" TEXT,  /* String */
	"content" bytea  /* Vec < u8 > */
)
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'attach_decode_wrapper';
CREATE FUNCTION dj."attach_encode"(
	"filename" TEXT, /* & str */
	"content" bytea /* & [u8] */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'attach_encode_wrapper';
CREATE FUNCTION dj."blob_decode"(
	"blob" bytea /* & [u8] */
) RETURNS jsonb /* JsonB */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'blob_decode_wrapper';
CREATE FUNCTION dj."blob_encode"(
	"value" jsonb, /* Option < JsonB > */
	"dtype" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bytea /* :: std :: option :: Option < Vec < u8 > > */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'blob_encode_wrapper';
CREATE FUNCTION dj."drop_store"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_store_wrapper';
CREATE FUNCTION dj."gc"(
	"store" TEXT, /* & str */
	"dry_run" bool DEFAULT true, /* bool */
	"grace" interval DEFAULT '1 day' /* pgrx :: datum :: Interval */
) RETURNS TABLE (
	"key" TEXT,  /* String */
	"size" bigint,  /* i64 */
	"modified" timestamp with time zone,  /* pgrx :: datum :: TimestampWithTimeZone */
	"action" TEXT  /* String */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'gc_wrapper';
CREATE FUNCTION dj."grant_store"(
	"name" TEXT, /* & str */
	"role" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'grant_store_wrapper';
CREATE FUNCTION dj."object_info"(
	"reference" jsonb /* Option < JsonB > */
) RETURNS jsonb /* Option < JsonB > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_info_wrapper';
CREATE FUNCTION dj."object_put"(
	"table" TEXT, /* & str */
	"attribute" TEXT, /* & str */
	"content" bytea, /* Option < & [u8] > */
	"filename" TEXT DEFAULT NULL, /* Option < & str > */
	"key" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS jsonb /* Option < JsonB > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_put_wrapper';
CREATE FUNCTION dj."object_put_file"(
	"table" TEXT, /* & str */
	"attribute" TEXT, /* & str */
	"path" TEXT, /* Option < & str > */
	"filename" TEXT DEFAULT NULL, /* Option < & str > */
	"key" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS jsonb /* Option < JsonB > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_put_file_wrapper';
CREATE FUNCTION dj."filepath_ref"(
	"table" TEXT, /* & str */
	"attribute" TEXT, /* & str */
	"path" TEXT /* Option < & str > */
) RETURNS jsonb /* Option < JsonB > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'filepath_ref_wrapper';
CREATE FUNCTION dj."object_refs"(
	"table" TEXT /* & str */
) RETURNS TABLE (
	"attribute" TEXT,  /* String */
	"key" jsonb,  /* JsonB */
	"store" TEXT,  /* Option < String > */
	"path" TEXT,  /* Option < String > */
	"size" bigint,  /* Option < i64 > */
	"hash" TEXT,  /* Option < String > */
	"is_dir" bool,  /* bool */
	"reference" jsonb  /* JsonB */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_refs_wrapper';
CREATE FUNCTION dj."object_get_file"(
	"reference" jsonb, /* Option < JsonB > */
	"path" TEXT /* & str */
) RETURNS bigint /* Option < i64 > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_get_file_wrapper';
CREATE FUNCTION dj."object_read"(
	"reference" jsonb, /* Option < JsonB > */
	"offset" bigint DEFAULT 0, /* i64 */
	"length" bigint DEFAULT NULL /* Option < i64 > */
) RETURNS bytea /* :: std :: option :: Option < Vec < u8 > > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_read_wrapper';
CREATE FUNCTION dj."object_url"(
	"reference" jsonb, /* Option < JsonB > */
	"expires" interval DEFAULT '1 hour' /* pgrx :: datum :: Interval */
) RETURNS TEXT /* Option < String > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_url_wrapper';
CREATE FUNCTION dj."object_verify"(
	"reference" jsonb /* Option < JsonB > */
) RETURNS bool /* Option < bool > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'object_verify_wrapper';
CREATE FUNCTION dj."revoke_store"(
	"name" TEXT, /* & str */
	"role" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'revoke_store_wrapper';
CREATE FUNCTION dj."store_config"(
	"name" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* JsonB */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'store_config_wrapper';
-- requires:
--   blob_decode
--   blob_encode
--   attach_decode
--   attach_encode


COMMENT ON FUNCTION dj.blob_decode(bytea) IS 'The JSON view of a DataJoint blob (<blob>, or the content of a <blob@store> object): plain values as JSON; n-d arrays as {"dtype", "shape", "data"} with data nested as numpy''s tolist(); other Python types tagged ($bytes, $uuid, $datetime, $decimal, $tuple, $set, $dict, $struct, $cell, $record, ...).';
COMMENT ON FUNCTION dj.blob_encode(jsonb, text) IS 'The DataJoint blob of a JSON document, byte for byte as datajoint-python packs the same value; with dtype (float64, int32, bool, complex128, ...), the document (a number or nested lists) becomes an n-d array of that type. Accepts everything dj.blob_decode gives.';
COMMENT ON FUNCTION dj.attach_decode(bytea) IS 'The file name and content of a DataJoint attachment (<attach>, or the content of an <attach@store> object).';
COMMENT ON FUNCTION dj.attach_encode(text, bytea) IS 'The DataJoint attachment of a file: its name, a NUL byte, its content (what an <attach> column holds).';
-- requires:
--   object_put
--   object_read
--   object_info
--   object_verify
--   gc


COMMENT ON FUNCTION dj.object_put(text, text, bytea, text, jsonb) IS 'Stores content for a store attribute of a table the caller may write and returns the reference to insert, as datajoint-python stores it: <blob@store> (a blob: dj.blob_encode), <attach@store> (a file''s bytes, with filename) and <hash@store> content-addressed; <npy@store> (a .npy file''s bytes) and <object@store> (any bytes, the extension from filename) under the row''s primary key. An object of a transaction that rolls back is never referenced and is removed by dj.gc.';
COMMENT ON FUNCTION dj.object_put_file(text, text, text, text, jsonb) IS 'As dj.object_put, the content read from a file on the server (roles with pg_read_server_files), streamed in 8 MiB parts; an attachment keeps filename, by default the file''s own name; an <object@store> attribute also takes a folder (its files and a manifest).';
COMMENT ON FUNCTION dj.filepath_ref(text, text, text) IS 'The reference a <filepath@store> attribute keeps for a file (or folder) already in the store at path (relative, outside DataJoint''s hash and schema sections, under the store''s filepath_prefix if set); such files are never deleted by DataJoint.';
COMMENT ON FUNCTION dj.object_refs(text) IS 'The objects a table''s rows reference, as plain columns for clients and BI tools: attribute, key (the row''s primary key), store, path, size, hash, is_dir, and the reference itself (for dj.object_url, dj.object_read). Read as the caller.';
COMMENT ON FUNCTION dj.object_get_file(jsonb, text) IS 'Writes a stored object to a file on the server (roles with pg_write_server_files; an existing file is replaced), streamed, its hash checked on the way; returns the bytes written.';
COMMENT ON FUNCTION dj.object_read(jsonb, bigint, bigint) IS 'The bytes of a stored object: all of them (a hash-addressed object''s hash checked), or length bytes from offset.';
COMMENT ON FUNCTION dj.object_info(jsonb) IS 'Where a stored object is and what its store says of it: store, path, hash, exists, size, modified (Unix seconds).';
COMMENT ON FUNCTION dj.object_verify(jsonb) IS 'Whether a stored object is there with the size and content hash its reference records.';
COMMENT ON FUNCTION dj.object_url(jsonb, interval) IS 'A presigned URL that lets anyone holding it download a stored object until it expires (S3 stores; at most 7 days); NULL for file stores.';
COMMENT ON FUNCTION dj.gc(text, boolean, interval) IS 'Garbage collection of a store (its owner or a superuser): objects under this database''s schemas that no row references and older than grace are quarantined; quarantined objects still unreferenced a grace later are deleted, referenced ones restored; objects a transaction under way wrote or found are never touched. dry_run (the default) only reports. One row per object considered.';
-- requires:
--   add_store
--   drop_store
--   grant_store
--   revoke_store
--   store_config


COMMENT ON FUNCTION dj.add_store(text, jsonb, boolean) IS 'Adds an object store (superusers and members of pg_write_server_files): spec has datajoint-python''s fields, {"protocol": "file", "location": ...} or {"protocol": "s3", "endpoint", "bucket", "location", "secure", "region", "access_key", "secret_key"}, and optionally subfolding, hash_prefix, schema_prefix, token_length, partition_pattern, filepath_prefix. Keys are kept apart, readable by no other role. Returns the spec as dj.stores shows it.';
COMMENT ON FUNCTION dj.drop_store(text) IS 'Removes a store from the catalog (its owner or a superuser); refused while an attribute is declared in it. Its objects stay where they are.';
COMMENT ON FUNCTION dj.grant_store(text, text) IS 'Lets a role (or PUBLIC) write and read the objects of a store (its owner or a superuser).';
COMMENT ON FUNCTION dj.revoke_store(text, text) IS 'Takes back dj.grant_store.';
COMMENT ON FUNCTION dj.store_config(text) IS 'The "stores" block of datajoint-python''s datajoint.json for a store, or for every store the caller may use (with "default"): locations resolved, no secrets.';

-- dj.set_make(table, module, fresh_instance): after dj._auto_populate exists (dropping a function
-- fires the event trigger that reads it).
DROP FUNCTION dj.set_make(text, text);
CREATE FUNCTION dj."set_make"(
	"table" TEXT, /* & str */
	"module" TEXT, /* & str */
	"fresh_instance" bool DEFAULT false /* bool */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_make_wrapper';
COMMENT ON FUNCTION dj.set_make(text, text, boolean) IS 'Binds a Computed or Imported table to the code a module name holds now (by sha256; re-registering the name changes nothing until the owner binds again); with fresh_instance, every key gets a fresh instance of the code instead of one instance serving the keys of a run in turn; table owner only.';
