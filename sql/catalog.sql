-- datajoint catalog: the extension's own tables in schema dj.
-- Created before any generated function. Rows users create are kept by pg_dump
-- (pg_extension_config_dump); caches are not.

-- The control file installs into schema dj, creating it if missing. A dj schema that already
-- exists must belong to a superuser: its owner could otherwise replace the extension's functions
-- with its own, for superusers to call later.
DO $$
BEGIN
  IF NOT (SELECT r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'dj') THEN
    RAISE EXCEPTION 'schema dj exists and is owned by a role that is not a superuser'
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Drop or rename that schema, or make a superuser its owner (ALTER SCHEMA dj OWNER TO ...), then CREATE EXTENSION datajoint again.';
  END IF;
END $$;

-- PostgreSQL creates schema dj for the control file with no privileges for other roles: every role
-- may use the dj functions its grants allow (function and table grants below decide what).
GRANT USAGE ON SCHEMA dj TO PUBLIC;
COMMENT ON SCHEMA dj IS 'DataJoint pipelines inside PostgreSQL: functions and catalog of the datajoint extension';

-- Make functions are WebAssembly components. Their code is kept by content (sha256): a version
-- never changes, and a table runs exactly the version its owner bound (dj.makes). Only the
-- extension writes these tables (dj.register_module, dj.set_make, dj.unregister_module, as the
-- extension's owner after checking the caller's rights); every role may read them.
CREATE TABLE dj.module_versions (
    sha256        text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    component     bytea NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by name NOT NULL,
    CONSTRAINT module_versions_content CHECK (sha256 = pg_catalog.encode(pg_catalog.sha256(component), 'hex'))
);
COMMENT ON TABLE dj.module_versions IS 'Every version of a make function still named or bound, by content (sha256, what computed rows record as _job_version).';

-- Module names (dj.register_module): what a name holds now. Registering the name again (only its
-- registrant, or a member of that role, may) points it at new code; tables keep their version.
CREATE TABLE dj.modules (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$'),
    sha256        text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by name NOT NULL DEFAULT current_user,
    CONSTRAINT modules_sha256_fkey FOREIGN KEY (sha256) REFERENCES dj.module_versions (sha256)
);
COMMENT ON TABLE dj.modules IS 'Make-function names registered with dj.register_module and the version (sha256) each holds now.';

ALTER TABLE dj.modules ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON dj.modules FOR SELECT USING (true);

-- Which code computes which table (dj.set_make, by the table's owner): the version's sha256, and
-- the name it was bound under.
CREATE TABLE dj.makes (
    schema_name name NOT NULL,
    table_name  name NOT NULL,
    module      text NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    set_by      name NOT NULL DEFAULT current_user,
    sha256      text NOT NULL,
    fresh_instance boolean NOT NULL DEFAULT false,
    PRIMARY KEY (schema_name, table_name),
    CONSTRAINT makes_sha256_fkey FOREIGN KEY (sha256) REFERENCES dj.module_versions (sha256)
);
COMMENT ON TABLE dj.makes IS 'The make function of each Computed or Imported table: the module version (sha256) its owner bound with dj.set_make, and whether each key gets a fresh instance of it (fresh_instance).';

ALTER TABLE dj.makes ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON dj.makes FOR SELECT USING (true);

-- Compiled machine code of a module version, per engine build and configuration, so that no
-- backend compiles the same module twice. Only the extension writes it (as its owner), and a
-- backend loads a row only if its seal (a MAC under a key in the server's data directory) proves
-- this server's extension wrote it for that module and engine: wasmtime runs this code as it is.
-- No other role may read it; never dumped (rebuilt on demand).
CREATE TABLE dj.module_artifacts (
    sha256      text NOT NULL REFERENCES dj.module_versions (sha256) ON DELETE CASCADE,
    engine      text NOT NULL,
    artifact    bytea NOT NULL,
    compiled_at timestamptz NOT NULL DEFAULT now(),
    seal        bytea NOT NULL,
    PRIMARY KEY (sha256, engine)
);
COMMENT ON TABLE dj.module_artifacts IS 'Compiled code of module versions, keyed by module hash and engine fingerprint, sealed by the server.';

-- Versions neither named nor bound go, with their machine code. Run by the extension after
-- every change of names and bindings, and when tables are dropped.
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

-- Per-schema pipeline settings.
CREATE TABLE dj.schema_settings (
    schema_name   name PRIMARY KEY,
    enforce_tiers boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE dj.schema_settings IS 'Per-schema settings, such as server-enforced tiers (dj.enforce_tiers).';

-- Anyone may read the settings; only a schema's owner (or a member of its owning role) may change them.
ALTER TABLE dj.schema_settings ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON dj.schema_settings FOR SELECT USING (true);
CREATE POLICY owner_writes ON dj.schema_settings FOR ALL
    USING (pg_has_role((SELECT nspowner FROM pg_namespace WHERE nspname = schema_name), 'USAGE'))
    WITH CHECK (pg_has_role((SELECT nspowner FROM pg_namespace WHERE nspname = schema_name), 'USAGE'));

-- A dropped table takes its make with it (a table declared later under the same name starts
-- without one). Runs as the extension's owner: when the event fires the table is gone, so the
-- ownership test of dj.makes' policy could no longer pass; it removes only rows of tables the
-- event reports dropped.
CREATE FUNCTION dj._forget_dropped_tables() RETURNS event_trigger
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
REVOKE ALL ON FUNCTION dj._forget_dropped_tables() FROM PUBLIC;
COMMENT ON FUNCTION dj._forget_dropped_tables() IS 'Event trigger: removes the dj.makes rows of dropped tables.';
CREATE EVENT TRIGGER dj_forget_dropped_tables ON sql_drop EXECUTE FUNCTION dj._forget_dropped_tables();

REVOKE ALL ON dj.module_artifacts FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON dj.schema_settings TO PUBLIC;
GRANT SELECT ON dj.module_versions, dj.modules, dj.makes TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('dj.module_versions', '');
SELECT pg_catalog.pg_extension_config_dump('dj.modules', '');
SELECT pg_catalog.pg_extension_config_dump('dj.makes', '');
SELECT pg_catalog.pg_extension_config_dump('dj.schema_settings', '');

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

-- Object stores (dj.add_store): where <blob@store>, <attach@store> and the other store codecs keep
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
