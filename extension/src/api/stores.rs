//! The catalog of object stores: `dj.add_store`, `dj.drop_store`, `dj.grant_store`,
//! `dj.revoke_store`, `dj.store_config` (the view `dj.stores` is in sql/catalog.sql).

use datajoint_core::store::{spec, Spec, Store};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Map};

use crate::error::{DjError, DjResult, OrRaise};
use crate::objects::{self, StoreRow};
use crate::{catalog, gucs, security};

fn denied(what: &str, hint: &str) -> DjError {
    DjError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to {what}"), hint)
}

fn admin_row(name: &str, what: &str) -> DjResult<StoreRow> {
    let row = objects::row(name)?.ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("store {name:?} does not exist"),
            "SELECT name FROM dj.stores lists the stores.",
        )
    })?;
    if !objects::may_admin(&row)? {
        return Err(denied(
            &format!("{what} store {name}"),
            &format!("Only its owner ({}) or a superuser may.", row.owner),
        ));
    }
    Ok(row)
}

/// `dj.add_store(name, spec, replace)`: adds (or with `replace`, changes) a store. `spec` has
/// datajoint-python's fields: `{"protocol": "file", "location": "/data/dj"}` or `{"protocol": "s3",
/// "endpoint", "bucket", "location", "secure", "region", "access_key", "secret_key"}`, plus the
/// optional `subfolding`, `hash_prefix`, `schema_prefix`, `token_length`, `partition_pattern`,
/// `filepath_prefix`. The keys are kept apart from the spec, readable by no other role.
#[pg_extern(volatile, parallel_unsafe)]
fn add_store(name: &str, spec: JsonB, replace: default!(bool, false)) -> JsonB {
    let _pin = security::pin();
    add(name, &spec.0, replace).or_raise("dj.add_store")
}

fn add(name: &str, spec_json: &serde_json::Value, replace: bool) -> DjResult<JsonB> {
    spec::check_name(name)?;
    let may =
        catalog::read_one::<bool>("SELECT pg_catalog.pg_has_role('pg_write_server_files', 'MEMBER')", &[])?
            .unwrap_or(false);
    if !may {
        return Err(denied(
            "add stores",
            "A store makes the server write files or call a service: only superusers and members of pg_write_server_files may add one. Ask one to add it and dj.grant_store it to you.",
        ));
    }
    let (spec, secrets) = Spec::parse(spec_json)?;
    if let Some(existing) = objects::row(name)? {
        if !replace {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("store {name} already exists"),
                "Pass replace => true to change it (objects already written stay where they are).",
            ));
        }
        admin_row(&existing.name, "replace")?;
    }
    // A store that cannot be opened is refused now rather than at its first object.
    Store::open(name, &spec, &secrets, &objects::home())?;
    let shown = spec.to_json();
    let secret = (secrets.access_key.is_some() || secrets.secret_key.is_some())
        .then(|| JsonB(json!({"access_key": secrets.access_key, "secret_key": secrets.secret_key})));
    let owner = security::current_role();
    security::as_extension_owner(|| {
        catalog::write_one::<bool>(
            "INSERT INTO dj._stores (name, spec, secrets, owner) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, secrets = EXCLUDED.secrets RETURNING true",
            &[name.into(), JsonB(shown.clone()).into(), secret.into(), owner.as_str().into()],
        )
    })?;
    Ok(JsonB(shown))
}

/// `dj.drop_store(name)`: removes a store from the catalog (its objects stay where they are).
/// Refused while a table declares an attribute in it.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_store(name: &str) {
    let _pin = security::pin();
    drop(name).or_raise("dj.drop_store")
}

fn drop(name: &str) -> DjResult<()> {
    admin_row(name, "drop")?;
    let using: Vec<String> = objects::store_columns()?
        .into_iter()
        .filter(|c| c.store == name)
        .map(|c| format!("{}.{}.{}", c.schema, c.table, c.column))
        .collect();
    let users = (!using.is_empty()).then(|| using.join(", "));
    if let Some(users) = users {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("store {name} is used by {users}"),
            "Drop those tables (or attributes) first.",
        ));
    }
    security::as_extension_owner(|| {
        catalog::write_one::<bool>(
            "DELETE FROM dj._stores WHERE name OPERATOR(pg_catalog.=) $1 RETURNING true",
            &[name.into()],
        )
    })?;
    Ok(())
}

/// The grantee's oid as a number (0 for PUBLIC: an invalid Oid datum would be NULL).
fn grantee_oid(role: &str) -> DjResult<i64> {
    if role.eq_ignore_ascii_case("public") {
        return Ok(0);
    }
    catalog::read_one::<i64>(
        "SELECT oid::pg_catalog.int8 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
        &[role.into()],
    )?
    .ok_or_else(|| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("role {role:?} does not exist"),
            "Name an existing role, or PUBLIC.",
        )
    })
}

/// `dj.grant_store(name, role)`: lets `role` (or PUBLIC) write and read the store's objects.
#[pg_extern(volatile, parallel_unsafe)]
fn grant_store(name: &str, role: &str) {
    let _pin = security::pin();
    let out: DjResult<()> = (|| {
        admin_row(name, "grant")?;
        let oid = grantee_oid(role)?;
        security::as_extension_owner(|| {
            catalog::write_one::<bool>(
                "INSERT INTO dj._store_grants VALUES ($1, $2::pg_catalog.oid) ON CONFLICT DO NOTHING RETURNING true",
                &[name.into(), oid.into()],
            )
        })?;
        Ok(())
    })();
    out.or_raise("dj.grant_store")
}

/// `dj.revoke_store(name, role)`: takes a grant back.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_store(name: &str, role: &str) {
    let _pin = security::pin();
    let out: DjResult<()> = (|| {
        admin_row(name, "revoke")?;
        let oid = grantee_oid(role)?;
        security::as_extension_owner(|| {
            catalog::write_one::<bool>(
                "DELETE FROM dj._store_grants WHERE store OPERATOR(pg_catalog.=) $1 AND grantee OPERATOR(pg_catalog.=) $2::pg_catalog.oid RETURNING true",
                &[name.into(), oid.into()],
            )
        })?;
        Ok(())
    })();
    out.or_raise("dj.revoke_store")
}

/// `dj.store_config(name)`: the `stores` block of datajoint-python's `datajoint.json` for the
/// named store, or for every store the caller may use: locations resolved, no secrets (a client
/// keeps its keys in `.secrets/stores.<name>.access_key` and `.secret_key`).
#[pg_extern(stable, parallel_safe)]
fn store_config(name: default!(Option<&str>, "NULL")) -> JsonB {
    let _pin = security::pin();
    config(name).or_raise("dj.store_config")
}

fn config(name: Option<&str>) -> DjResult<JsonB> {
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => security::as_extension_owner(|| {
            Spi::connect(|client| {
                let rows = client.select("SELECT name FROM dj._stores ORDER BY name", None, &[])?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(r.get::<String>(1)?.unwrap_or_default());
                }
                Ok::<_, DjError>(out)
            })
        })?,
    };
    let mut block = Map::new();
    let default = gucs::default_store();
    let home = objects::home();
    for n in names {
        let row = objects::row(&n)?.ok_or_else(|| {
            DjError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("store {n:?} does not exist"),
                "SELECT name FROM dj.stores lists the stores.",
            )
        })?;
        if !objects::may_use(&n)? {
            if name.is_some() {
                return Err(denied(
                    &format!("use store {n}"),
                    &format!("The store's owner ({}) may grant it with dj.grant_store.", row.owner),
                ));
            }
            continue;
        }
        if n == default {
            block.insert("default".into(), json!(n));
        }
        // A client configured from this block may write first: a file store's folder is made
        // now (opening it does), not on the server's first write. Failing that, the client's own
        // error says which folder is missing.
        let _ = objects::open(&n);
        block.insert(n.clone(), row.spec.client_config(&home));
    }
    Ok(JsonB(serde_json::Value::Object(block)))
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.add_store(text, jsonb, boolean) IS 'Adds an object store (superusers and members of pg_write_server_files): spec has datajoint-python''s fields, {"protocol": "file", "location": ...} or {"protocol": "s3", "endpoint", "bucket", "location", "secure", "region", "access_key", "secret_key"}, and optionally subfolding, hash_prefix, schema_prefix, token_length, partition_pattern, filepath_prefix. Keys are kept apart, readable by no other role. Returns the spec as dj.stores shows it.';
COMMENT ON FUNCTION dj.drop_store(text) IS 'Removes a store from the catalog (its owner or a superuser); refused while an attribute is declared in it. Its objects stay where they are.';
COMMENT ON FUNCTION dj.grant_store(text, text) IS 'Lets a role (or PUBLIC) write and read the objects of a store (its owner or a superuser).';
COMMENT ON FUNCTION dj.revoke_store(text, text) IS 'Takes back dj.grant_store.';
COMMENT ON FUNCTION dj.store_config(text) IS 'The "stores" block of datajoint-python''s datajoint.json for a store, or for every store the caller may use (with "default"): locations resolved, no secrets.';
"#,
    name = "stores_comments",
    requires = [add_store, drop_store, grant_store, revoke_store, store_config],
);
