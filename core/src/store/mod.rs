//! Object stores: DataJoint 2.x's stores (`file`, `s3`) with its layout, so datajoint-python's
//! clients read what we write and we read what they write. The catalog of stores, the privileges
//! and the transactions around writes belong to the host; this module knows the layout, the
//! checks and the I/O (through the `object_store` crate).

pub mod address;
mod client;
pub mod folder;
pub mod npy;
pub mod schema_path;
pub mod spec;

pub use client::{Meta, Store, PART};
pub use spec::{Home, Protocol, Secrets, Spec};

/// What went wrong, by the kind a host maps to an SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A bad store spec.
    Spec,
    /// A key that would leave the store or break its layout.
    Key,
    /// A column value that is not an object reference.
    Reference,
    /// The object is not in the store.
    NotFound,
    /// The object's content does not match its hash.
    Corrupt,
    /// The store could not be reached, read or written.
    Io,
    /// A protocol this build cannot open.
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    pub hint: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>, hint: impl Into<String>) -> Self {
        StoreError { kind, message: message.into(), hint: hint.into() }
    }
    pub(crate) fn spec(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Spec, message, hint)
    }
    pub(crate) fn key(key: &str, why: &str) -> Self {
        let shown: String = key.chars().take(80).collect();
        Self::new(StoreErrorKind::Key, format!("{shown:?} is not a valid object key: {why}"), "Keys are relative paths inside the store; file names and key values may not contain /, \\, control characters, or be \".\" or \"..\".")
    }
    pub(crate) fn reference(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Reference, message, "An object reference is the JSON a store column holds, such as {\"hash\", \"path\", \"schema\", \"store\", \"size\"}.")
    }
}
