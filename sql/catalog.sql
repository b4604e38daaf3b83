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

-- WebAssembly components that implement make functions (dj.register_module), by name; the
-- sha256 (hex) is what computed rows record as their _job_version.
CREATE TABLE dj.modules (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$'),
    sha256        text NOT NULL,
    component     bytea NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by name NOT NULL DEFAULT current_user,
    CHECK (sha256 = pg_catalog.encode(pg_catalog.sha256(component), 'hex'))
);
COMMENT ON TABLE dj.modules IS 'WebAssembly components registered with dj.register_module: make functions, by name, with their sha256.';

-- Anyone may read and register modules; a name is replaced or removed only by (a member of) the
-- role that registered it.
ALTER TABLE dj.modules ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON dj.modules FOR SELECT USING (true);
CREATE POLICY register ON dj.modules FOR INSERT WITH CHECK (registered_by = current_user);
CREATE POLICY replace ON dj.modules FOR UPDATE USING (pg_has_role(registered_by, 'USAGE'))
    WITH CHECK (registered_by = current_user);
CREATE POLICY remove ON dj.modules FOR DELETE USING (pg_has_role(registered_by, 'USAGE'));

-- Which module computes which table (dj.set_make).
CREATE TABLE dj.makes (
    schema_name name NOT NULL,
    table_name  name NOT NULL,
    module      text NOT NULL REFERENCES dj.modules (name) ON UPDATE CASCADE,
    set_at      timestamptz NOT NULL DEFAULT now(),
    set_by      name NOT NULL DEFAULT current_user,
    PRIMARY KEY (schema_name, table_name)
);
COMMENT ON TABLE dj.makes IS 'The make function (module) of each Computed or Imported table, set with dj.set_make.';

-- Anyone may read; only a table's owner (or a member of the owning role) may choose its make.
ALTER TABLE dj.makes ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON dj.makes FOR SELECT USING (true);
CREATE POLICY owner_writes ON dj.makes FOR ALL
    USING (pg_has_role((SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = schema_name AND c.relname = table_name), 'USAGE'))
    WITH CHECK (pg_has_role((SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname = schema_name AND c.relname = table_name), 'USAGE'));

-- Compiled machine code of a module, per engine build and configuration, so that no backend
-- compiles the same module twice. Only the extension writes it (as its owner: wasmtime runs this
-- code as it is, so no other role may even read it); never dumped (rebuilt on demand).
CREATE TABLE dj.module_artifacts (
    sha256      text NOT NULL,
    engine      text NOT NULL,
    artifact    bytea NOT NULL,
    compiled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, engine)
);
COMMENT ON TABLE dj.module_artifacts IS 'Compiled code of registered modules, keyed by module hash and engine fingerprint.';

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
     WHERE d.object_type = 'table' AND d.schema_name = m.schema_name AND d.object_name = m.table_name;
END
$forget$;
REVOKE ALL ON FUNCTION dj._forget_dropped_tables() FROM PUBLIC;
COMMENT ON FUNCTION dj._forget_dropped_tables() IS 'Event trigger: removes the dj.makes rows of dropped tables.';
CREATE EVENT TRIGGER dj_forget_dropped_tables ON sql_drop EXECUTE FUNCTION dj._forget_dropped_tables();

REVOKE ALL ON dj.module_artifacts FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON dj.schema_settings, dj.modules, dj.makes TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('dj.modules', '');
SELECT pg_catalog.pg_extension_config_dump('dj.makes', '');
SELECT pg_catalog.pg_extension_config_dump('dj.schema_settings', '');
