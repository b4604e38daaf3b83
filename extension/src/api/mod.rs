//! SQL-facing functions, one module per concept.

mod sandbox;
mod version;
