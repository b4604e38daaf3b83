//! SQL-facing functions, one module per concept.

pub(crate) mod algebra;
mod auto;
mod blob;
pub mod declare;
pub mod delete;
mod objects;
mod pipeline;
mod populate;
mod runs;
mod sandbox;
mod stores;
pub mod tiers;
mod version;
