//! SQL-facing functions, one module per concept.

mod declare;
mod pipeline;
mod sandbox;
mod version;
