//! A folder of files as one `<object@store>` object, as datajoint-python 2.3.5's `put_folder`
//! stores it: each file under `{key}/{relative path}`, and a `{key}.manifest.json` sidecar
//! listing them (`{files: [{path, size}], total_size, item_count, created}`).

use std::path::Path;

use serde_json::json;

use super::address::check_relative;
use super::{Store, StoreError, StoreErrorKind};

/// What a folder upload wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Relative paths (with `/`) and sizes, in sorted order.
    pub files: Vec<(String, u64)>,
    pub total_size: u64,
}

fn local(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::new(StoreErrorKind::Io, format!("could not {what} {}: {e}", path.display()), "")
}

/// Every regular file under `dir` (following file symlinks, not folder ones), relative, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, folder)) = stack.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| local("list", &folder, e))? {
            let entry = entry.map_err(|e| local("list", &folder, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let kind = entry.file_type().map_err(|e| local("inspect", &entry.path(), e))?;
            if kind.is_dir() {
                stack.push((rel, entry.path()));
            } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Uploads every file of `dir` under `key`, streamed, then the manifest (`created` is its ISO
/// time); `cancelled` is asked between files (reads within a file stop through the reader).
pub fn upload(
    store: &Store,
    dir: &Path,
    key: &str,
    created: &str,
    reader: &mut dyn FnMut(std::fs::File) -> Box<dyn std::io::Read>,
) -> Result<Manifest, StoreError> {
    let files = list_files(dir)?;
    let mut manifest = Manifest { files: Vec::with_capacity(files.len()), total_size: 0 };
    for (rel, path) in files {
        let target = format!("{key}/{rel}");
        check_relative(&target)?;
        let file = std::fs::File::open(&path).map_err(|e| local("open", &path, e))?;
        let size = store.put_from(&target, &mut reader(file), &mut |_| {})?;
        manifest.total_size += size;
        manifest.files.push((rel, size));
    }
    let doc = json!({
        "files": manifest.files.iter().map(|(p, s)| json!({"path": p, "size": s})).collect::<Vec<_>>(),
        "total_size": manifest.total_size,
        "item_count": manifest.files.len(),
        "created": created,
    });
    let text = serde_json::to_vec_pretty(&doc).expect("JSON");
    store.put(&format!("{key}.manifest.json"), text)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Home, Spec};

    #[test]
    fn a_folder_and_its_manifest() {
        let base = std::env::temp_dir().join(format!("dj-folder-test-{}", std::process::id()));
        let src = base.join("src");
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::write(src.join("a.txt"), b"aaa").unwrap();
        std::fs::write(src.join("sub/deeper/b.bin"), b"bb").unwrap();
        let (spec, secrets) =
            Spec::parse(&json!({"protocol": "file", "location": base.join("store").to_str().unwrap()}))
                .unwrap();
        let home = Home { data_directory: "/nonexistent".into(), database: "d".into() };
        let store = Store::open("t", &spec, &secrets, &home).unwrap();
        let m = upload(&store, &src, "_schema/lab/t/id=1/f_tok", "2026-01-01T00:00:00+00:00", &mut |f| {
            Box::new(f)
        })
        .unwrap();
        assert_eq!(m.files, vec![("a.txt".to_string(), 3), ("sub/deeper/b.bin".to_string(), 2)]);
        assert_eq!(m.total_size, 5);
        assert_eq!(store.get("_schema/lab/t/id=1/f_tok/sub/deeper/b.bin", 10).unwrap(), b"bb");
        let doc: serde_json::Value =
            serde_json::from_slice(&store.get("_schema/lab/t/id=1/f_tok.manifest.json", 1000).unwrap())
                .unwrap();
        assert_eq!(doc["item_count"], 2);
        assert_eq!(doc["files"][1]["path"], "sub/deeper/b.bin");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
