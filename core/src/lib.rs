//! The part of the datajoint extension that needs no PostgreSQL: everything here is plain Rust,
//! unit-tested with `cargo test -p datajoint-core`, and shared by the extension and (later) an
//! out-of-database worker.

pub mod algebra;
pub mod artifact;
pub mod blob;
pub mod cascade;
pub mod declare;
pub mod definition;
pub mod dependencies;
pub mod describe;
pub mod diagram;
pub mod host;
pub mod isolate;
pub mod make;
pub mod naming;
pub mod populate;
pub mod restriction;
pub mod sandbox;
pub mod sql;
pub mod store;
pub mod threads;
pub mod types;
pub mod values;

/// The wasmtime version this build links, read from Cargo.lock at build time.
pub const WASMTIME_VERSION: &str = env!("DJ_WASMTIME_VERSION");
