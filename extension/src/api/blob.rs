//! DataJoint's `<blob>` and `<attach>` values seen from SQL: `dj.blob_decode` / `dj.blob_encode`
//! (JSON in and out, so psql and BI tools can look inside), `dj.attach_decode` / `dj.attach_encode`.

use datajoint_core::blob::{self, json};
use datajoint_core::store::address;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{DjError, OrRaise};

/// `dj.blob_decode(blob)`: the JSON view of a blob (arrays as `{dtype, shape, data}`).
#[pg_extern(immutable, parallel_safe, strict)]
fn blob_decode(blob: &[u8]) -> JsonB {
    let value = blob::unpack(blob).or_raise("dj.blob_decode");
    JsonB(json::to_json(&value))
}

/// `dj.blob_encode(value, dtype)`: the blob of a JSON document, as datajoint-python packs the same
/// Python value; with `dtype`, the document (a number or nested lists) is an n-d array of it.
#[pg_extern(immutable, parallel_safe)]
fn blob_encode(value: Option<JsonB>, dtype: default!(Option<&str>, "NULL")) -> Option<Vec<u8>> {
    const FN: &str = "dj.blob_encode";
    let value = value?;
    let v = json::from_json(&value.0, dtype).unwrap_or_else(|e| {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("cannot encode this document as a blob: {}", e.message),
            "Numbers, strings, lists and objects encode as Python values; {\"dtype\", \"shape\", \"data\"} and dtype => 'float64' (etc.) give n-d arrays; see dj.blob_decode's output for the other forms.",
        )
        .raise(FN)
    });
    Some(blob::pack(&v).or_raise(FN))
}

/// `dj.attach_decode(attachment)`: an `<attach>` value's file name and content.
#[pg_extern(immutable, parallel_safe, strict)]
fn attach_decode(
    attachment: &[u8],
) -> TableIterator<'static, (name!(filename, String), name!(content, Vec<u8>))> {
    let (name, content) = address::split_attachment(attachment).or_raise("dj.attach_decode");
    TableIterator::once((name, content.to_vec()))
}

/// `dj.attach_encode(filename, content)`: the `<attach>` value of a file.
#[pg_extern(immutable, parallel_safe, strict)]
fn attach_encode(filename: &str, content: &[u8]) -> Vec<u8> {
    address::attachment(filename, content).or_raise("dj.attach_encode")
}

extension_sql!(
    r#"
COMMENT ON FUNCTION dj.blob_decode(bytea) IS 'The JSON view of a DataJoint blob (<blob>, or the content of a <blob@store> object): plain values as JSON; n-d arrays as {"dtype", "shape", "data"} with data nested as numpy''s tolist(); other Python types tagged ($bytes, $uuid, $datetime, $decimal, $tuple, $set, $dict, $struct, $cell, $record, ...).';
COMMENT ON FUNCTION dj.blob_encode(jsonb, text) IS 'The DataJoint blob of a JSON document, byte for byte as datajoint-python packs the same value; with dtype (float64, int32, bool, complex128, ...), the document (a number or nested lists) becomes an n-d array of that type. Accepts everything dj.blob_decode gives.';
COMMENT ON FUNCTION dj.attach_decode(bytea) IS 'The file name and content of a DataJoint attachment (<attach>, or the content of an <attach@store> object).';
COMMENT ON FUNCTION dj.attach_encode(text, bytea) IS 'The DataJoint attachment of a file: its name, a NUL byte, its content (what an <attach> column holds).';
"#,
    name = "blob_comments",
    requires = [blob_decode, blob_encode, attach_decode, attach_encode],
);
