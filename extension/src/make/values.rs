//! Datums as the contract's values and back, with PostgreSQL's ranges checked on the way in.

use std::ffi::{CStr, CString};

use datajoint_core::make::{self, Value};
use datajoint_core::values::{self, OutOfRange};
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode};

use crate::error::{DjError, DjResult};
use datajoint_core::host::Column;

/// A datum of type `type_oid` as the contract's value.
///
/// # Safety
/// `datum` must be a valid datum of `type_oid` (or ignored when `is_null`).
pub unsafe fn to_value(datum: pg_sys::Datum, is_null: bool, type_oid: pg_sys::Oid) -> DjResult<Value> {
    use pgrx::FromDatum;
    if is_null {
        return Ok(Value::Null);
    }
    Ok(unsafe {
        match type_oid {
            pg_sys::BOOLOID => Value::Boolean(datum.value() != 0),
            pg_sys::INT2OID => Value::Int(i64::from(i16::from_datum(datum, false).unwrap_or_default())),
            pg_sys::INT4OID => Value::Int(i64::from(i32::from_datum(datum, false).unwrap_or_default())),
            pg_sys::INT8OID => Value::Int(i64::from_datum(datum, false).unwrap_or_default()),
            pg_sys::FLOAT4OID => Value::Float(f64::from(f32::from_datum(datum, false).unwrap_or_default())),
            pg_sys::FLOAT8OID => Value::Float(f64::from_datum(datum, false).unwrap_or_default()),
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => {
                Value::Text(String::from_datum(datum, false).unwrap_or_default())
            }
            pg_sys::BYTEAOID => Value::Bytes(Vec::<u8>::from_datum(datum, false).unwrap_or_default()),
            pg_sys::DATEOID => Value::Date(values::date_from_pg(datum.value() as i32)),
            pg_sys::TIMEOID => Value::Time(datum.value() as i64),
            pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
                let pg = datum.value() as i64;
                Value::Timestamp(values::timestamp_from_pg(pg).ok_or_else(|| {
                    let kind = OutOfRange::ContractTimestamp;
                    DjError::new(
                        PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
                        format!(
                            "timestamp {} is beyond what a make function can receive",
                            output_text(datum, type_oid)
                        ),
                        format!("{}; restrict the query to exclude it.", kind.range()),
                    )
                })?)
            }
            pg_sys::UUIDOID => {
                let uuid = pgrx::Uuid::from_datum(datum, false);
                let b = uuid.as_ref().map(|u| *u.as_bytes()).unwrap_or_default();
                let hi = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                let lo = u64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
                Value::Uuid((hi, lo))
            }
            pg_sys::NUMERICOID => Value::Decimal(output_text(datum, type_oid)),
            pg_sys::JSONOID | pg_sys::JSONBOID => Value::Json(output_text(datum, type_oid)),
            // Enums, names, intervals, arrays, ...: their text form.
            _ => Value::Text(output_text(datum, type_oid)),
        }
    })
}

unsafe fn output_text(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> String {
    unsafe {
        let mut output = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(type_oid, &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        let out = CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        out
    }
}

/// A value through its type's input function (enums, numerics, JSON, dates as text, ...).
/// `text` has no NUL (checked by the caller).
unsafe fn input_text(text: &str, type_oid: pg_sys::Oid) -> pg_sys::Datum {
    let text = CString::new(text).expect("checked for NUL");
    unsafe {
        let mut input = pg_sys::InvalidOid;
        let mut ioparam = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(type_oid, &mut input, &mut ioparam);
        pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut _, ioparam, -1)
    }
}

/// The value as a datum of the column's type (None for NULL), in the current memory context.
/// Values PostgreSQL could not read back are refused: dates, times and timestamps out of its
/// ranges (22008), text with NUL (22021), floats too large for a float4 (22003).
pub fn to_datum(v: &Value, column: &Column, table: &str) -> DjResult<Option<pg_sys::Datum>> {
    let out_of_range = || {
        DjError::new(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!(
                "value {} is out of range for attribute {} ({}) of {table}",
                make::display_value(v),
                column.name,
                column.type_name
            ),
            "Check the value the make function computes, or widen the attribute's type.",
        )
    };
    let bad_datetime = |kind: OutOfRange| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
            format!(
                "value {} is out of range for attribute {} ({}) of {table}",
                make::display_value(v),
                column.name,
                column.type_name
            ),
            format!("PostgreSQL stores {}.", kind.range()),
        )
    };
    let text_ok = |s: &str| -> DjResult<()> {
        if s.contains('\0') {
            return Err(DjError::new(
                PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
                format!("the value for attribute {} of {table} contains a NUL character", column.name),
                "PostgreSQL text cannot hold NUL (\\0); store binary data in a bytea attribute.",
            ));
        }
        Ok(())
    };
    let t = pg_sys::Oid::from(column.type_id);
    let datum = unsafe {
        match (v, t) {
            (Value::Null, _) => return Ok(None),
            (Value::Boolean(b), pg_sys::BOOLOID) => b.into_datum(),
            (Value::Int(i), pg_sys::INT2OID) => i16::try_from(*i).map_err(|_| out_of_range())?.into_datum(),
            (Value::Int(i), pg_sys::INT4OID) => i32::try_from(*i).map_err(|_| out_of_range())?.into_datum(),
            (Value::Int(i), pg_sys::INT8OID) => i.into_datum(),
            (Value::Int(i), pg_sys::FLOAT4OID) => (*i as f32).into_datum(),
            (Value::Int(i), pg_sys::FLOAT8OID) => (*i as f64).into_datum(),
            (Value::Float(f), pg_sys::FLOAT4OID) => {
                let narrow = *f as f32;
                if narrow.is_infinite() && f.is_finite() {
                    return Err(out_of_range());
                }
                narrow.into_datum()
            }
            (Value::Float(f), pg_sys::FLOAT8OID) => f.into_datum(),
            (Value::Int(i), pg_sys::NUMERICOID) => Some(input_text(&i.to_string(), t)),
            (Value::Float(f), pg_sys::NUMERICOID) => Some(input_text(&numeric_text(*f), t)),
            (Value::Decimal(s), pg_sys::NUMERICOID) => {
                text_ok(s)?;
                Some(input_text(s, t))
            }
            (Value::Text(s), pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID) => {
                text_ok(s)?;
                if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 {
                    s.as_str().into_datum()
                } else {
                    // Through the input function: the server converts (and refuses what its
                    // encoding cannot hold).
                    Some(input_text(s, t))
                }
            }
            (Value::Bytes(b), pg_sys::BYTEAOID) => b.as_slice().into_datum(),
            (Value::Json(s), pg_sys::JSONOID | pg_sys::JSONBOID) => {
                text_ok(s)?;
                Some(input_text(s, t))
            }
            (Value::Date(d), pg_sys::DATEOID) => {
                Some(pg_sys::Datum::from(values::date_to_pg(*d).map_err(bad_datetime)?))
            }
            (Value::Time(us), pg_sys::TIMEOID) => {
                Some(pg_sys::Datum::from(values::time_to_pg(*us).map_err(bad_datetime)?))
            }
            (Value::Timestamp(us), pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID) => {
                Some(pg_sys::Datum::from(values::timestamp_to_pg(*us).map_err(bad_datetime)?))
            }
            (Value::Uuid((hi, lo)), pg_sys::UUIDOID) => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&hi.to_be_bytes());
                bytes[8..].copy_from_slice(&lo.to_be_bytes());
                pgrx::Uuid::from_bytes(bytes).into_datum()
            }
            // Text goes through the type's input function: enums, dates as '2024-01-31', ...
            (Value::Text(s), _) => {
                text_ok(s)?;
                Some(input_text(s, t))
            }
            _ => {
                return Err(DjError::new(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!(
                        "attribute {} of {table} is {}; the make function passed a {} value",
                        column.name,
                        column.type_name,
                        make::kind(v)
                    ),
                    "Pass a value of the attribute's type (or its text form).",
                ))
            }
        }
    };
    Ok(datum)
}

/// A float as numeric input: NaN and the infinities in the words numeric_in reads.
fn numeric_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        f.to_string()
    }
}

/// A one-dimensional array of `values` as elements of `column`'s type, with the array type's oid.
pub fn array_datum(
    values: &[&Value],
    column: &Column,
    table: &str,
) -> DjResult<(pg_sys::Oid, pg_sys::Datum)> {
    let datums = values.iter().map(|v| to_datum(v, column, table)).collect::<DjResult<Vec<_>>>()?;
    array_from_datums(&datums, column, table)
}

/// A one-dimensional array of datums of `column`'s type (None: NULL), with the array type's oid.
pub fn array_from_datums(
    datums: &[Option<pg_sys::Datum>],
    column: &Column,
    table: &str,
) -> DjResult<(pg_sys::Oid, pg_sys::Datum)> {
    let element = pg_sys::Oid::from(column.type_id);
    // SAFETY: a catalog lookup by oid.
    let array_type = unsafe { pg_sys::get_array_type(element) };
    if array_type == pg_sys::InvalidOid {
        return Err(DjError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("attribute {} ({}) of {table} has no array type", column.name, column.type_name),
            "Its values are read and written one key at a time.",
        ));
    }
    let mut nulls: Vec<bool> = datums.iter().map(Option::is_none).collect();
    let mut elements: Vec<pg_sys::Datum> =
        datums.iter().map(|d| d.unwrap_or(pg_sys::Datum::from(0usize))).collect();
    let (mut len, mut by_value, mut align) = (0i16, false, 0 as std::os::raw::c_char);
    let mut dims = [datums.len() as i32];
    let mut lower = [1i32];
    // SAFETY: as many datums and nulls as the one dimension says, of the element type given.
    let array = unsafe {
        pg_sys::get_typlenbyvalalign(element, &mut len, &mut by_value, &mut align);
        pg_sys::construct_md_array(
            elements.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lower.as_mut_ptr(),
            element,
            len as i32,
            by_value,
            align,
        )
    };
    Ok((array_type, pg_sys::Datum::from(array)))
}
