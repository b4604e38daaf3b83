//! The pgrx crate: SQL entry points only. The work lives in `datajoint-core`; this layer reads
//! settings, calls into the core and turns its errors into PostgreSQL errors.

use pgrx::prelude::*;

mod api;
mod catalog;
mod error;
mod gucs;
mod headings;
mod interrupts;
mod make;
mod objects;
mod pipeline;
mod preload;
mod regclass;
mod rows;
mod security;
mod worker;

::pgrx::pg_module_magic!();

// The catalog: schema-level objects that are not generated from Rust functions.
pgrx::extension_sql_file!("../../sql/catalog.sql", name = "catalog", bootstrap);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    if preload::check_at_load() {
        worker::slots::init();
        worker::register_launcher();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'datajoint'"]
    }
}
