use serde_json::json;

use super::json::{from_json, to_json};
use super::*;

/// Blobs packed by datajoint-python 2.3.5 (`core/tests/fixtures/blob/generate.py`).
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("../../tests/fixtures/blob/blobs.json");
    let cases: serde_json::Value = serde_json::from_str(text).unwrap();
    cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let hex = c["hex"].as_str().unwrap();
            let bytes =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (c["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

fn fixture(name: &str) -> Vec<u8> {
    fixtures().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no fixture {name}")).1
}

#[test]
fn every_fixture_decodes_and_reencodes_to_the_same_bytes() {
    let all = fixtures();
    assert!(all.len() >= 50);
    for (name, bytes) in all {
        let value = unpack(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pack(&value).unwrap(), bytes, "{name}: re-encoded bytes differ");
    }
}

#[test]
fn every_fixture_starts_as_a_blob_and_other_bytes_do_not() {
    for (name, bytes) in fixtures() {
        assert!(looks_like_blob(&bytes[..bytes.len().min(6)]), "{name}");
    }
    for other in [&b""[..], b"mYm", b"mYm1", b"ZL12", b"\x89PNG\r\n", b"dj0 "] {
        assert!(!looks_like_blob(other), "{other:?}");
    }
}

#[test]
fn json_view_round_trips_to_the_same_bytes() {
    // Dict keys come back sorted (JSON objects keep no order), so a dict whose keys were not
    // sorted packs differently; nothing else may.
    for (name, bytes) in fixtures() {
        if name == "nested_empty" {
            continue;
        }
        let j = to_json(&unpack(&bytes).unwrap());
        let again = from_json(&j, None).unwrap_or_else(|e| panic!("{name}: {e} in {j}"));
        assert_eq!(pack(&again).unwrap(), bytes, "{name}: {j}");
    }
}

#[test]
fn json_view_of_typical_values() {
    let view = |name: &str| to_json(&unpack(&fixture(name)).unwrap());
    assert_eq!(view("float"), json!(1.5));
    assert_eq!(view("float_nan"), json!({"$float": "NaN"}));
    assert_eq!(view("int_negative"), json!(-300));
    assert_eq!(view("int_big").to_string(), "1267650600228229401496703217721");
    assert_eq!(view("string_unicode"), json!("µs → ∞"));
    assert_eq!(view("bytes"), json!({"$bytes": "0001616263"}));
    assert_eq!(view("decimal"), json!({"$decimal": "3.1415926535897932384626"}));
    assert_eq!(view("uuid"), json!({"$uuid": "12345678-1234-5678-1234-567812345678"}));
    assert_eq!(view("datetime"), json!({"$datetime": "2024-03-05T13:07:09.123456"}));
    assert_eq!(view("date"), json!({"$date": "1999-12-31"}));
    assert_eq!(view("time"), json!({"$time": "23:59:01.000005"}));
    assert_eq!(view("list"), json!([1, 2.5, "x", null, true]));
    assert_eq!(view("tuple"), json!({"$tuple": [1, "a"]}));
    assert_eq!(view("dict"), json!({"a": 1, "b": [1, 2, 3], "c": {"d": "e"}}));
    assert_eq!(view("dict_int_keys"), json!({"$dict": [[1, "one"], [2, "two"]]}));
    assert_eq!(
        view("f64_matrix"),
        json!({"dtype": "float64", "shape": [2, 3], "data": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]})
    );
    assert_eq!(
        view("f64_fortran"),
        json!({"dtype": "float64", "shape": [3, 2], "data": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]})
    );
    assert_eq!(view("u64"), json!({"dtype": "uint64", "shape": [1], "data": [18446744073709551615u64]}));
    assert_eq!(
        view("complex_array"),
        json!({"dtype": "complex128", "shape": [2], "data": [[1.0, 2.0], [3.0, -4.0]]})
    );
    assert_eq!(view("scalar_0d"), json!({"dtype": "float64", "shape": [], "data": 2.5}));
    assert_eq!(view("np_float32"), json!({"dtype": "float32", "shape": [], "data": 1.25}));
    assert_eq!(view("nan_array")["data"], json!(["NaN", "Infinity", "-Infinity", 0.5]));
    assert_eq!(view("str_array"), json!({"dtype": "object", "shape": [2], "data": ["ab", "c"]}));
    assert_eq!(view("char_array"), json!({"dtype": "char", "shape": [2], "data": ["h", "i"]}));
    assert_eq!(view("empty_array"), json!({"dtype": "float64", "shape": [0, 3], "data": []}));
    let f32 = view("f32_3d");
    assert_eq!(f32["data"][1][2][3], json!(23.0));
    assert_eq!(f32["data"][0][1][0], json!(4.0));
    assert_eq!(view("recarray")["$record"][1][1]["data"], json!([2.0, 4.0]));
    assert_eq!(view("struct")["$struct"]["data"][0][1]["y"], json!("b"));
    assert_eq!(view("cell")["$cell"]["data"][0][1], json!("text"));
}

#[test]
fn encoding_json_matches_datajoint_python() {
    // The bytes datajoint-python gives for the same Python values.
    let enc = |j: serde_json::Value, dtype: Option<&str>| pack(&from_json(&j, dtype).unwrap()).unwrap();
    assert_eq!(enc(json!(1.5), None), fixture("float"));
    assert_eq!(enc(json!(7), None), fixture("int_small"));
    assert_eq!(enc(json!("Traceback x"), None), fixture("string"));
    assert_eq!(enc(json!([1, 2.5, "x", null, true]), None), fixture("list"));
    assert_eq!(enc(json!({"a": 1, "b": [1, 2, 3], "c": {"d": "e"}}), None), fixture("dict"));
    assert_eq!(enc(json!([1.0, 2.0]), Some("float64")), fixture("f64_vector"));
    assert_eq!(enc(json!([[0, 1, 2], [3, 4, 5]]), Some("float64")), fixture("f64_matrix"));
    assert_eq!(enc(json!([[1, -2], [3, -4]]), Some("int32")), fixture("i32"));
    assert_eq!(enc(json!(2.5), Some("float64")), fixture("scalar_0d"));
    // Complex leaves are [re, im] pairs: this is complex_array, np.array([1+2j, 3-4j]).
    assert_eq!(enc(json!([[1, 2], [3, -4]]), Some("complex128")), fixture("complex_array"));
    let range: Vec<f64> = (0..1000).map(|i| i as f64).collect();
    assert_eq!(enc(json!(range), Some("float64")), fixture("compressed_f64"), "zlib output must match");
    let ints: Vec<i64> = (0..300).collect();
    assert_eq!(enc(json!(ints), None), fixture("compressed_list"));
    assert_eq!(enc(json!("hi"), Some("char")).len(), 4 + 1 + 8 + 16 + 8 + 4);
}

#[test]
fn big_ints_keep_datajoint_widths() {
    for v in [0i128, 1, 127, 128, 255, 256, -1, -128, -129, -300, i64::MAX as i128, i64::MIN as i128] {
        let bytes = match Value::int(v) {
            Value::Int(b) => b,
            _ => unreachable!(),
        };
        // Python: v.bit_length() // 8 + 1
        let bit_length = 128 - v.unsigned_abs().leading_zeros();
        assert_eq!(bytes.len() as u32, bit_length / 8 + 1, "{v}");
        assert_eq!(Value::as_i128(&bytes), Some(v));
    }
    let huge = "-1267650600228229401496703217721";
    let v = from_json(&serde_json::from_str(huge).unwrap(), None).unwrap();
    assert_eq!(to_json(&v).to_string(), huge);
    assert_eq!(unpack(&pack(&v).unwrap()).unwrap(), v);
}

#[test]
fn hostile_blobs_are_refused_without_allocating_their_claims() {
    let refuse = |b: &[u8]| unpack(b).unwrap_err().message;
    assert!(refuse(b"").contains("no protocol header"));
    assert!(refuse(b"xyz\0A").contains("not mYm or dj0"));
    // An array claiming 2^40 float64 elements in a 40-byte blob.
    let mut big = b"mYm\0A".to_vec();
    big.extend_from_slice(&1u64.to_le_bytes());
    big.extend_from_slice(&(1u64 << 40).to_le_bytes());
    big.extend_from_slice(&6u32.to_le_bytes());
    big.extend_from_slice(&0u32.to_le_bytes());
    assert!(refuse(&big).contains("truncated"));
    // Shape product overflow.
    let mut ovf = b"mYm\0A".to_vec();
    ovf.extend_from_slice(&2u64.to_le_bytes());
    ovf.extend_from_slice(&u64::MAX.to_le_bytes());
    ovf.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(refuse(&ovf).contains("overflows"));
    // A list claiming 2^60 items.
    let mut list = b"dj0\0\x02".to_vec();
    list.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(refuse(&list).contains("truncated"));
    // A decompression bomb's declared size.
    let mut bomb = b"ZL123\0".to_vec();
    bomb.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(refuse(&bomb).contains("1 GiB"));
    // A declared size smaller than the stream.
    let mut short = fixture("compressed_f64");
    short[6..14].copy_from_slice(&100u64.to_le_bytes());
    assert!(refuse(&short).contains("mismatch"));
    // Nesting past the limit.
    let mut deep = b"dj0\0".to_vec();
    for _ in 0..(MAX_DEPTH + 5) {
        deep.push(0x02);
        deep.extend_from_slice(&1u64.to_le_bytes());
        deep.extend_from_slice(&0u64.to_le_bytes()); // length, wrong but never reached
    }
    assert!(!refuse(&deep).is_empty());
    // Trailing bytes after the value.
    let mut trailing = fixture("float");
    trailing.push(0);
    assert!(refuse(&trailing).contains("length check"));
    // Unknown codes.
    assert!(refuse(b"dj0\0Q").contains("unknown data structure code"));
}

#[test]
fn bad_json_is_refused_with_a_reason() {
    let refuse = |j: serde_json::Value, dtype: Option<&str>| from_json(&j, dtype).unwrap_err().message;
    assert!(refuse(json!([1, 2]), Some("float128")).contains("unknown dtype"));
    assert!(refuse(json!([[1, 2], [3]]), Some("float64")).contains("rectangular"));
    assert!(refuse(json!([300]), Some("uint8")).contains("out of range"));
    assert!(refuse(json!(["a"]), Some("int32")).contains("not a int32"));
    assert!(refuse(json!({"$uuid": "12"}), None).contains("32 hex"));
    assert!(refuse(json!({"$date": "2024-13-01"}), None).contains("not a date"));
    assert!(refuse(json!({"$nope": 1}), None).contains("unknown tag"));
    assert!(refuse(json!({"dtype": "float64", "shape": [1u64 << 40, 1u64 << 40], "data": []}), None)
        .contains("too large"));
}
