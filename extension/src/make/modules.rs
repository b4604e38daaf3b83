//! Registered modules inside the backend: compiled in a child process, machine code cached (and
//! sealed) in `dj.module_artifacts` for every backend, prepared once per backend.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

use datajoint_core::artifact;
use datajoint_core::make::{self, Prepared};
use datajoint_core::sandbox::SandboxError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::SpiHost;
use crate::catalog;
use crate::error::{DjError, DjResult};
use crate::{gucs, interrupts, security};

thread_local! {
    static LINKER: RefCell<Option<Rc<make::MakeLinker<SpiHost>>>> = const { RefCell::new(None) };
    /// Prepared modules of this backend, by sha256: a key costs an instantiation, not a compile.
    static PREPARED: RefCell<HashMap<String, Rc<Prepared<SpiHost>>>> = RefCell::new(HashMap::new());
}

fn linker() -> DjResult<Rc<make::MakeLinker<SpiHost>>> {
    LINKER.with(|l| {
        if let Some(linker) = l.borrow().as_ref() {
            return Ok(linker.clone());
        }
        let linker = Rc::new(make::linker::<SpiHost>().map_err(DjError::from)?);
        *l.borrow_mut() = Some(linker.clone());
        Ok(linker)
    })
}

/// Compiles component bytes (in a child process: cancellable, its memory capped by
/// `dj.module_compile_memory`) and checks them against the world; returns the machine code.
pub fn validate(bytes: &[u8]) -> DjResult<Vec<u8>> {
    gucs::engine_settings();
    let artifact = make::precompile(bytes, gucs::module_compile_memory(), interrupts::stop_requested)
        .map_err(module_error)?;
    // SAFETY: machine code this backend's engine produced a moment ago, in its own child.
    let component = unsafe { make::deserialize(&artifact) }.map_err(DjError::from)?;
    Prepared::new(&*linker()?, &component).map_err(module_error)?;
    Ok(artifact)
}

/// Registration errors, worded for components (the sandbox's own words are for core modules).
fn module_error(e: SandboxError) -> DjError {
    let world = "Build against wasm-make/wit (world datajoint:make/make@0.1.1): cargo build --target wasm32-wasip2, or componentize-py -w make.";
    let mut err = DjError::from(e.clone());
    match e {
        SandboxError::InvalidModule { message, .. } => {
            err.message = format!("not a valid WebAssembly component: {message}");
            err.hint = world.into();
        }
        SandboxError::UnsupportedImport(what) => {
            err.message = format!("the component needs an import the host does not provide: {what}");
            err.hint = "Make functions may import only WASI 0.2 and datajoint:make/host@0.1.x.".into();
        }
        SandboxError::MissingExport { .. } => {
            err.message = "the component exports no function make".into();
            err.hint = "Export make: func(key: row) -> result<_, string>. ".to_string() + world;
        }
        SandboxError::WrongSignature { found, .. } => {
            err.message = format!("the component's make has the wrong type: {found}");
            err.hint = "Export make: func(key: row) -> result<_, string>. ".to_string() + world;
        }
        _ => {}
    }
    err
}

/// The prepared module with this hash: from this backend's cache, else from the machine-code
/// cache (only when its seal proves this server's extension wrote it), else compiled from its
/// bytes (and the machine code stored, sealed, for every other backend).
pub fn prepared(sha256: &str) -> DjResult<Rc<Prepared<SpiHost>>> {
    if let Some(p) = PREPARED.with(|p| p.borrow().get(sha256).cloned()) {
        return Ok(p);
    }
    gucs::engine_settings();
    let engine = make::engine_fingerprint();
    let key = artifact_key()?;
    let stored = security::as_extension_owner(|| {
        Ok(Spi::connect(|client| -> Result<_, pgrx::spi::Error> {
            let rows = client.select(
                "SELECT a.artifact, a.seal FROM dj.module_artifacts a \
                 WHERE a.sha256 OPERATOR(pg_catalog.=) $1 AND a.engine OPERATOR(pg_catalog.=) $2",
                Some(1),
                &[sha256.into(), engine.as_str().into()],
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let row = rows.first();
            Ok(Some((row.get::<Vec<u8>>(1)?.unwrap_or_default(), row.get::<Vec<u8>>(2)?.unwrap_or_default())))
        })?)
    })?;
    let artifact = match stored {
        Some((artifact, seal)) if artifact::verify(&key, sha256, &engine, &artifact, &seal) => artifact,
        // Missing, or not written by this server's extension: compile again, replace the row.
        _ => {
            let _pin = security::pin();
            let bytes = catalog::read_one::<Vec<u8>>(
                "SELECT v.component FROM dj.module_versions v WHERE v.sha256 OPERATOR(pg_catalog.=) $1",
                &[sha256.into()],
            )?
            .ok_or_else(|| {
                DjError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    format!("module version {sha256} is not registered"),
                    "Register it with dj.register_module(name, bytes), then bind it with dj.set_make.",
                )
            })?;
            let artifact = validate(&bytes)?;
            store_artifact(sha256, &artifact)?;
            artifact
        }
    };
    // SAFETY: sealed by this server's extension for this module and engine, or compiled just now.
    let component = unsafe { make::deserialize(&artifact) }.map_err(DjError::from)?;
    let prepared = Rc::new(Prepared::new(&*linker()?, &component).map_err(module_error)?);
    PREPARED.with(|p| p.borrow_mut().insert(sha256.to_string(), prepared.clone()));
    Ok(prepared)
}

/// Stores the machine code of module `sha256` for this engine, sealed; replaces a row that is
/// there (one that failed its seal).
pub fn store_artifact(sha256: &str, artifact: &[u8]) -> DjResult<()> {
    let engine = make::engine_fingerprint();
    let seal = artifact::seal(&artifact_key()?, sha256, &engine, artifact);
    security::as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO dj.module_artifacts (sha256, engine, artifact, seal) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sha256, engine) DO UPDATE SET artifact = EXCLUDED.artifact, seal = EXCLUDED.seal, \
               compiled_at = pg_catalog.now()",
            &[sha256.into(), engine.as_str().into(), artifact.into(), seal.as_slice().into()],
        )?;
        Ok(())
    })
}

thread_local! {
    static ARTIFACT_KEY: RefCell<Option<Rc<[u8]>>> = const { RefCell::new(None) };
}

/// The server's key for sealing machine code: 32 random bytes in a file of the data directory
/// (readable only by the server's OS user), made by the first backend that needs it.
fn artifact_key() -> DjResult<Rc<[u8]>> {
    if let Some(key) = ARTIFACT_KEY.with(|k| k.borrow().clone()) {
        return Ok(key);
    }
    let failed = |what: &str, e: std::io::Error| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("cannot {what} the key that seals compiled modules: {e}"),
            "The server's data directory must be writable by the server.",
        )
    };
    // SAFETY: DataDir is set before any backend runs queries.
    let dir = unsafe { CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned();
    let path = std::path::Path::new(&dir).join("datajoint_artifact.key");
    let key = match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => key,
        _ => {
            let mut key = vec![0u8; 32];
            // SAFETY: fills the 32-byte buffer.
            if !unsafe { pg_sys::pg_strong_random(key.as_mut_ptr().cast(), key.len()) } {
                return Err(failed("generate", std::io::Error::other("no strong random numbers")));
            }
            // Written aside, then moved into place: a concurrent backend reads a whole key or none.
            let tmp = path.with_extension(format!("key.{}", std::process::id()));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| failed("write", e))?;
                f.write_all(&key).and_then(|_| f.sync_all()).map_err(|e| failed("write", e))?;
            }
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => key,
                // Another backend made it first (or a broken one is there: replace it).
                Err(_) => match std::fs::read(&path) {
                    Ok(theirs) if theirs.len() == 32 => theirs,
                    _ => {
                        std::fs::write(&tmp, &key).map_err(|e| failed("write", e))?;
                        std::fs::rename(&tmp, &path).map_err(|e| failed("write", e))?;
                        key
                    }
                },
            }
        }
    };
    let key: Rc<[u8]> = key.into();
    ARTIFACT_KEY.with(|k| *k.borrow_mut() = Some(key.clone()));
    Ok(key)
}
