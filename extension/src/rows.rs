//! Rows that leave the extension as jsonb exactly as PostgreSQL made them: each row's
//! `to_jsonb` is computed in the server and its datum handed over as it is. (Reading it into
//! serde_json and writing it again changed numbers: a float64 lost digits, a decimal(30,12) its
//! scale and precision, the largest double failed.)

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode};

use crate::error::{DjError, DjResult};

/// A jsonb datum, returned to PostgreSQL untouched.
pub struct JsonRow(pg_sys::Datum);

impl IntoDatum for JsonRow {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

pgrx::impl_sql_translatable!(JsonRow, "jsonb");

// SAFETY: returns the datum as it is (a jsonb the caller's memory context holds).
unsafe impl pgrx::callconv::BoxRet for JsonRow {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// The rows of the read-only `query`, whose one column is jsonb, copied into the memory context
/// current when called (a set-returning function's: they outlive the call).
pub fn json_rows(query: &str) -> DjResult<Vec<JsonRow>> {
    let text = CString::new(query).map_err(|_| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "a query contains a NUL character",
            "This is a bug in datajoint; please report it.",
        )
    })?;
    let mut rows = Vec::new();
    // SAFETY: SPI used as documented: connect, run, read the tuple table, copy each datum out of
    // SPI's memory (SPI_datumTransfer: into the context current at SPI_connect), finish. An ERROR
    // in between unwinds, and the transaction's abort cleans SPI up.
    unsafe {
        pg_sys::SPI_connect();
        let status = pg_sys::SPI_execute(text.as_ptr(), true, 0);
        if status < 0 {
            pg_sys::SPI_finish();
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("SPI_execute failed with status {status}"),
                "This is a bug in datajoint; please report it.",
            ));
        }
        let table = pg_sys::SPI_tuptable;
        if !table.is_null() {
            let n = pg_sys::SPI_processed as usize;
            rows.reserve(n);
            for i in 0..n {
                let mut is_null = false;
                let datum = pg_sys::SPI_getbinval(*(*table).vals.add(i), (*table).tupdesc, 1, &mut is_null);
                if !is_null {
                    rows.push(JsonRow(pg_sys::SPI_datumTransfer(datum, false, -1)));
                }
            }
        }
        pg_sys::SPI_finish();
    }
    Ok(rows)
}
