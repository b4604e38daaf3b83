use pgrx::prelude::*;

/// `dj.version()`: the extension and the wasmtime it runs guests with.
#[pg_extern(immutable, parallel_safe)]
fn version() -> String {
    format!("datajoint {}, wasmtime {}", env!("CARGO_PKG_VERSION"), datajoint_core::WASMTIME_VERSION)
}

extension_sql!(
    "COMMENT ON FUNCTION dj.version() IS 'The datajoint extension version and the wasmtime version it runs make functions with.';",
    name = "version_comment",
    requires = [version]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_names_extension_and_wasmtime() {
        let v = Spi::get_one::<String>("SELECT dj.version()").unwrap().unwrap();
        assert_eq!(v, format!("datajoint {}, wasmtime 48.0.8", env!("CARGO_PKG_VERSION")));
    }

    #[pg_test]
    fn settings_are_registered_and_prefix_reserved() {
        assert_eq!(Spi::get_one::<String>("SHOW dj.make_timeout").unwrap().unwrap(), "1h");
        assert_eq!(Spi::get_one::<String>("SHOW dj.make_memory_limit").unwrap().unwrap(), "1GB");
        assert_eq!(Spi::get_one::<String>("SHOW dj.make_fuel").unwrap().unwrap(), "0");
    }

    /// A misspelt dj.* setting is refused rather than kept as a silent placeholder.
    #[pg_test(error = "invalid configuration parameter name \"dj.make_timout\"")]
    fn misspelt_setting_is_an_error() {
        Spi::run("SET dj.make_timout = 5").unwrap();
    }
}
