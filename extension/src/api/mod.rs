//! SQL-facing functions, one module per concept.

mod declare;
mod sandbox;
mod version;
