//! Records the wasmtime version from the workspace Cargo.lock so `dj.version()` reports what is
//! really linked (wasmtime exports no version constant).
use std::path::PathBuf;

fn main() {
    let lock = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).expect("Cargo.lock is committed beside the workspace");
    let version = text
        .split("[[package]]")
        .find(|pkg| pkg.lines().any(|l| l.trim() == "name = \"wasmtime\""))
        .and_then(|pkg| pkg.lines().find_map(|l| l.trim().strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("wasmtime is in Cargo.lock");
    println!("cargo:rustc-env=DJ_WASMTIME_VERSION={version}");
}
