//! SQL-facing functions, one module per concept.

mod declare;
mod delete;
mod pipeline;
mod sandbox;
pub mod tiers;
mod version;
