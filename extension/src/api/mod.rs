//! SQL-facing functions, one module per concept.

pub(crate) mod algebra;
mod auto;
pub mod declare;
pub mod delete;
mod pipeline;
mod populate;
mod runs;
mod sandbox;
pub mod tiers;
mod version;
