//! DataJoint's `<blob>` serialization: the codec is the `datajoint-blob` crate (core/blob, shared
//! with the guest SDK); [`json`] is the view SQL users get.

pub use datajoint_blob::*;
pub mod json;

#[cfg(test)]
mod tests;
