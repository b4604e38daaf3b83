//! `dj.gc`: removes the objects of a store that no row references, in two steps so that nothing a
//! client is about to reference is lost. An unreferenced object older than the grace window is
//! first moved to the store's quarantine (`_dj_trash/{time}/{key}`); one still unreferenced when
//! a later run finds it there, a grace window on, is deleted, and one referenced again by then is
//! put back. Objects a transaction under way has written or found are never touched (they are
//! locked, see [`super::locks`]); references are looked for again, under a new snapshot, after
//! the locks are taken. datajoint-python's own collector deletes at once (its issues #1445,
//! #1478): a client that found an object and has not committed its row yet loses it there.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use datajoint_core::sql;
use datajoint_core::store::{address, Store, StoreErrorKind};
use pgrx::prelude::*;

use super::{locks, StoreRow};
use crate::error::{DjError, DjResult};
use crate::security;

/// Where quarantined objects wait, relative to the store's root.
pub use datajoint_core::store::address::TRASH;

/// Objects locked and re-checked at a time (each lock takes a slot of the shared lock table).
const BATCH: usize = 256;

/// What happened to one object.
pub struct Outcome {
    pub key: String,
    pub size: i64,
    pub modified_us: i64,
    pub action: String,
}

struct Candidate {
    key: String,
    /// The key the object is referenced by: itself, or the key it had before quarantine.
    original: String,
    size: u64,
    modified_us: i64,
    quarantined: bool,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Collects the store's unreferenced objects under this database's schemas.
pub fn collect(row: &StoreRow, store: &Store, dry_run: bool, grace_us: i64) -> DjResult<Vec<Outcome>> {
    // SAFETY: a plain read of the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "dj.gc must run under READ COMMITTED",
            "It looks for references again after taking its locks, which needs a new snapshot: run it outside REPEATABLE READ and SERIALIZABLE transactions.",
        ));
    }
    let now = now_us();
    let mut out = Vec::new();
    let mut candidates = Vec::new();
    let referenced = references(&row.name, None)?;

    // Quarantined objects first.
    store.list(&format!("{TRASH}/"), |m| {
        let rest = &m.key[TRASH.len() + 1..];
        let Some((stamp, original)) = rest.split_once('/') else { return Ok(()) };
        let Ok(since) = stamp.parse::<i64>() else { return Ok(()) };
        if now - since < grace_us {
            out.push(Outcome {
                key: m.key.clone(),
                size: m.size as i64,
                modified_us: m.modified_us,
                action: "quarantined".to_string(),
            });
        } else {
            candidates.push(Candidate {
                original: original.to_string(),
                key: m.key,
                size: m.size,
                modified_us: m.modified_us,
                quarantined: true,
            });
        }
        Ok(())
    })?;

    // A schema whose name cannot be a key segment has no objects (and must not stop the run).
    for schema in schemas()?.into_iter().filter(|s| address::check_segment(s).is_ok()) {
        for prefix in [&store.spec.hash_prefix, &store.spec.schema_prefix] {
            let prefix = format!("{}/{}/", prefix.trim_matches('/'), schema);
            store.list(&prefix, |m| {
                if is_referenced(&m.key, &referenced) {
                    return Ok(());
                }
                if now - m.modified_us < grace_us {
                    out.push(Outcome {
                        key: m.key,
                        size: m.size as i64,
                        modified_us: m.modified_us,
                        action: "kept: younger than the grace window".to_string(),
                    });
                } else {
                    candidates.push(Candidate {
                        original: m.key.clone(),
                        key: m.key,
                        size: m.size,
                        modified_us: m.modified_us,
                        quarantined: false,
                    });
                }
                Ok(())
            })?;
        }
    }

    for batch in candidates.chunks(BATCH) {
        let taken: Vec<&Candidate> = batch
            .iter()
            .filter(|c| {
                // A folder object's files are held through the folder's key.
                let free = !folders_of(&c.original).any(|f| locks::is_held(&row.name, f))
                    && locks::try_take(&row.name, &c.original);
                if !free {
                    out.push(Outcome {
                        key: c.key.clone(),
                        size: c.size as i64,
                        modified_us: c.modified_us,
                        action: "kept: in use by a transaction".to_string(),
                    });
                }
                free
            })
            .collect();
        // Rows committed before the locks were taken are seen now.
        let originals: Vec<String> = taken.iter().map(|c| c.original.clone()).collect();
        let still = references(&row.name, Some(&originals))?;
        for c in &taken {
            let in_use = is_referenced(&c.original, &still);
            let done = (|| -> Result<&'static str, datajoint_core::store::StoreError> {
                Ok(match (c.quarantined, in_use, dry_run) {
                    (false, true, _) => "kept: referenced",
                    (false, false, true) => "would quarantine",
                    (false, false, false) => {
                        store.rename(&c.key, &format!("{TRASH}/{now}/{}", c.key))?;
                        "quarantined"
                    }
                    (true, true, true) => "would restore",
                    (true, true, false) => {
                        if store.head(&c.original)?.is_some() {
                            store.delete(&c.key)?;
                        } else {
                            store.rename(&c.key, &c.original)?;
                        }
                        "restored"
                    }
                    (true, false, true) => "would delete",
                    (true, false, false) => {
                        store.delete(&c.key)?;
                        "deleted"
                    }
                })
            })();
            // One object that cannot be moved does not stop the run: it is reported and stays.
            let action = match done {
                Ok(a) => a.to_string(),
                // Removed meanwhile (by another collector).
                Err(e) if e.kind == StoreErrorKind::NotFound => "gone".to_string(),
                Err(e) => format!("failed: {}", e.message),
            };
            out.push(Outcome { key: c.key.clone(), size: c.size as i64, modified_us: c.modified_us, action });
        }
        for c in &taken {
            locks::give_back(&row.name, &c.original);
        }
    }
    Ok(out)
}

/// The keys a writer of `key` may hold instead of it: the folders above it, and the object a
/// `.manifest.json` describes.
fn folders_of(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..i]).chain(key.strip_suffix(".manifest.json"))
}

/// A key is referenced when a reference names it, a folder holding it, or the object its
/// `.manifest.json` describes.
fn is_referenced(key: &str, referenced: &HashSet<String>) -> bool {
    if referenced.contains(key) {
        return true;
    }
    if let Some(object) = key.strip_suffix(".manifest.json") {
        if referenced.contains(object) {
            return true;
        }
    }
    key.match_indices('/').any(|(i, _)| referenced.contains(&key[..i]))
}

/// The schemas of this database that may have objects (not the system's, not dj).
fn schemas() -> DjResult<Vec<String>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT nspname::pg_catalog.text FROM pg_catalog.pg_namespace \
              WHERE nspname OPERATOR(pg_catalog.!~) '^(pg_|information_schema$|dj$)'",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.get::<String>(1)?.unwrap_or_default());
        }
        Ok(out)
    })
}

/// The paths referenced in `store` by every store column of this database (or only those among
/// `among`), read as the extension's owner (whatever the tables' privileges and row security).
/// A reference without a store name (datajoint-python's default store) counts for every store.
fn references(store: &str, among: Option<&[String]>) -> DjResult<HashSet<String>> {
    let found: Vec<(String, String, String)> =
        super::store_columns()?.into_iter().map(|c| (c.schema, c.table, c.column)).collect();
    security::as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let mut paths = HashSet::new();
            for (schema, table, column) in found {
                let col = sql::ident(&column);
                let mut query = format!(
                    "SELECT {col} OPERATOR(pg_catalog.->>) 'path' FROM {} WHERE {col} IS NOT NULL \
                       AND COALESCE({col} OPERATOR(pg_catalog.->>) 'store', $1) OPERATOR(pg_catalog.=) $1",
                    sql::qualified(&schema, &table)
                );
                let rows = match among {
                    Some(keys) => {
                        query.push_str(&format!(
                            " AND {col} OPERATOR(pg_catalog.->>) 'path' OPERATOR(pg_catalog.=) ANY ($2)"
                        ));
                        // A folder object is referenced by a prefix of its files' keys.
                        let mut wanted: Vec<String> = keys.to_vec();
                        for k in keys {
                            wanted.extend(k.match_indices('/').map(|(i, _)| k[..i].to_string()));
                            if let Some(o) = k.strip_suffix(".manifest.json") {
                                wanted.push(o.to_string());
                            }
                        }
                        client.update(&query, None, &[store.into(), wanted.into()])?
                    }
                    None => client.update(&query, None, &[store.into()])?,
                };
                for r in rows {
                    if let Some(p) = r.get::<String>(1)? {
                        paths.insert(p);
                    }
                }
            }
            Ok(paths)
        })
    })
}
