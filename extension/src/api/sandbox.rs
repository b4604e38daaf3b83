//! `dj._sandbox_call`: runs one export of a self-contained core module under the `dj.make_*`
//! limits. Superuser-only; it exists to prove the sandbox inside a live backend (the make-function
//! runtime builds on the same engine and limits).

use datajoint_core::sandbox;
use pgrx::prelude::*;

use crate::error::{DjError, OrRaise};
use crate::{gucs, interrupts, security};

/// A smoke test of the sandbox: what it compiles stays small.
const MAX_MODULE_BYTES: usize = 1 << 20;

#[pg_extern(volatile, parallel_unsafe, name = "_sandbox_call")]
fn sandbox_call(module: &[u8], export: default!(&str, "'run'")) -> i64 {
    let _pin = security::pin();
    const FN: &str = "dj._sandbox_call";
    if module.len() > MAX_MODULE_BYTES {
        DjError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("module is {} bytes; dj._sandbox_call takes at most {MAX_MODULE_BYTES}", module.len()),
            "Use a smaller module: this entry point is a smoke test of the sandbox.",
        )
        .raise(FN);
    }
    let limits = gucs::make_limits();
    let compiled =
        sandbox::compile_isolated(module, gucs::module_compile_memory(), interrupts::stop_requested)
            .or_raise(FN);
    sandbox::call_export(&compiled, export, &limits, sandbox::Cancel::Check(interrupts::stop_requested))
        .or_raise(FN)
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION dj._sandbox_call(bytea, text) FROM PUBLIC;
COMMENT ON FUNCTION dj._sandbox_call(bytea, text) IS
  'Internal: instantiate a self-contained WebAssembly module (binary or text) under the dj.make_* limits and return the result of its export. Superuser only.';
"#,
    name = "sandbox_call_acl",
    requires = [sandbox_call]
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn call(wat: &str) -> Option<i64> {
        let sql = format!("SELECT dj._sandbox_call(convert_to($wat${wat}$wat$, 'UTF8'))");
        Spi::get_one::<i64>(&sql).unwrap()
    }

    #[pg_test]
    fn returns_the_guest_result() {
        assert_eq!(call(r#"(module (func (export "run") (result i64) i64.const 42))"#), Some(42));
    }

    #[pg_test(error = "guest trapped: wasm `unreachable` instruction executed")]
    fn trap_is_an_error() {
        call(r#"(module (func (export "run") unreachable))"#);
    }

    #[pg_test(error = "guest ran past its time limit of 200 ms")]
    fn infinite_loop_is_stopped_by_the_timeout() {
        Spi::run("SET dj.make_timeout = 200").unwrap();
        call(r#"(module (func (export "run") (loop (br 0))))"#);
    }

    #[pg_test(error = "guest used up its fuel budget of 1000000 units")]
    fn infinite_loop_is_stopped_by_fuel() {
        Spi::run("SET dj.make_fuel = 1").unwrap();
        call(r#"(module (func (export "run") (loop (br 0))))"#);
    }

    #[pg_test(error = "guest tried to use 16842752 bytes of memory, above the limit of 16777216 bytes")]
    fn memory_bomb_is_stopped_by_the_cap() {
        Spi::run("SET dj.make_memory_limit = '16MB'").unwrap();
        call(
            r#"(module (memory 1) (func (export "run")
                 (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"#,
        );
    }

    #[pg_test(error = "module has no exported function \"main\"")]
    fn missing_export_is_an_error() {
        Spi::get_one::<i64>(
            r#"SELECT dj._sandbox_call(convert_to('(module (func (export "run")))', 'UTF8'), 'main')"#,
        )
        .unwrap();
    }
}
