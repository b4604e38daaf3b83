//! Blobs as JSON, for SQL users and BI tools (`dj.blob_decode`, `dj.blob_encode`).
//!
//! Plain values stay plain: null, booleans, numbers, strings, lists and dicts with string keys.
//! An n-d array is `{"dtype": "float64", "shape": [2, 3], "data": [[…], […]]}`, data nested in C
//! order as numpy's `tolist()` shows it (complex elements `[re, im]`; NaN and infinities as the
//! strings "NaN", "Infinity", "-Infinity"). Every other value is an object with one `$` key:
//! `$bytes` (hex), `$uuid`, `$decimal`, `$datetime`/`$date`/`$time` (ISO 8601), `$complex`,
//! `$float` (non-finite), `$tuple`, `$set`, `$dict` (`[[key, value], …]` when a key is not a
//! string), `$struct`, `$cell`, `$record`. Decoding then encoding gives the same value back,
//! except that JSON objects keep no key order.

use serde_json::{json, Map, Number, Value as Json};

use super::{Array, ArrayData, BlobError, Dtype, Value, MAX_DEPTH};

/// The JSON view of a value.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(bytes) => Json::Number(number(&int_to_decimal(bytes))),
        Value::Float(f) => float(*f, || tagged("$float", Json::String(non_finite(*f).into()))),
        Value::Complex(re, im) => tagged("$complex", json!([float_element(*re), float_element(*im)])),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => tagged("$bytes", Json::String(hex(b))),
        Value::Decimal(s) => tagged("$decimal", Json::String(s.clone())),
        Value::Uuid(u) => tagged("$uuid", Json::String(uuid_text(u))),
        Value::DateTime { date, time } => match (*date >= 0, *time >= 0) {
            (true, true) => {
                tagged("$datetime", Json::String(format!("{}T{}", date_text(*date), time_text(*time))))
            }
            (true, false) => tagged("$date", Json::String(date_text(*date))),
            _ => tagged("$time", Json::String(time_text(*time))),
        },
        Value::Tuple(items) => tagged("$tuple", Json::Array(items.iter().map(to_json).collect())),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Set(items) => tagged("$set", Json::Array(items.iter().map(to_json).collect())),
        Value::Dict(pairs) => {
            let all_str = pairs.iter().all(|(k, _)| matches!(k, Value::Str(_)));
            let distinct = {
                let mut keys: Vec<&Value> = pairs.iter().map(|(k, _)| k).collect();
                keys.dedup();
                keys.len() == pairs.len()
            };
            if all_str && distinct && !looks_tagged(pairs) {
                let mut m = Map::new();
                for (k, v) in pairs {
                    if let Value::Str(k) = k {
                        m.insert(k.clone(), to_json(v));
                    }
                }
                Json::Object(m)
            } else {
                tagged(
                    "$dict",
                    Json::Array(pairs.iter().map(|(k, v)| json!([to_json(k), to_json(v)])).collect()),
                )
            }
        }
        Value::Array(a) => array_to_json(a),
        Value::Struct { shape, fields, elements } => {
            let records: Vec<Json> = elements
                .iter()
                .map(|e| Json::Object(fields.iter().cloned().zip(e.iter().map(to_json)).collect()))
                .collect();
            tagged("$struct", json!({"shape": shape, "fields": fields, "data": nest(shape, &records)}))
        }
        Value::Cell { shape, elements } => {
            let items: Vec<Json> = elements.iter().map(to_json).collect();
            tagged("$cell", json!({"shape": shape, "data": nest(shape, &items)}))
        }
        Value::Record(fields) => {
            tagged("$record", Json::Array(fields.iter().map(|(n, v)| json!([n, to_json(v)])).collect()))
        }
    }
}

/// The value a JSON document stands for. With `dtype`, the document (a number or nested lists)
/// is an n-d array of that numpy dtype.
pub fn from_json(j: &Json, dtype: Option<&str>) -> Result<Value, BlobError> {
    match dtype {
        Some(name) => {
            let (dtype, complex) = Dtype::parse(name).ok_or_else(|| {
                BlobError::new(format!(
                    "unknown dtype {name:?}: use bool, int8…int64, uint8…uint64, float32, float64, complex64, \
                     complex128, char, object or datetime64[unit]"
                ))
            })?;
            Ok(Value::Array(array_from_json(dtype, complex, None, j, 0)?))
        }
        None => value(j, 0),
    }
}

fn tagged(tag: &str, v: Json) -> Json {
    let mut m = Map::new();
    m.insert(tag.into(), v);
    Json::Object(m)
}

/// A dict whose JSON form would read as a tagged value or an array is kept as `$dict`.
fn looks_tagged(pairs: &[(Value, Value)]) -> bool {
    let key = |i: usize| match &pairs[i].0 {
        Value::Str(s) => s.as_str(),
        _ => "",
    };
    (pairs.len() == 1 && key(0).starts_with('$'))
        || (pairs.len() == 3 && {
            let mut k = [key(0), key(1), key(2)];
            k.sort();
            k == ["data", "dtype", "shape"]
        })
}

fn number(text: &str) -> Number {
    serde_json::from_str(text).expect("a decimal number parses as JSON")
}

fn non_finite(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn float(f: f64, otherwise: impl FnOnce() -> Json) -> Json {
    if f.is_finite() {
        Json::Number(number(&format!("{f:?}")))
    } else {
        otherwise()
    }
}

fn float_element(f: f64) -> Json {
    float(f, || Json::String(non_finite(f).into()))
}

fn float32_element(f: f32) -> Json {
    if f.is_finite() {
        Json::Number(number(&format!("{f:?}")))
    } else {
        Json::String(non_finite(f as f64).into())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn date_text(d: i32) -> String {
    format!("{:04}-{:02}-{:02}", d / 10000, (d / 100) % 100, d % 100)
}

fn time_text(t: i64) -> String {
    let (h, m, s, us) = (t / 10_000_000_000 % 100, t / 100_000_000 % 100, t / 1_000_000 % 100, t % 1_000_000);
    if us == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{us:06}")
    }
}

/// Nested lists in C order from elements in Fortran order.
fn nest(shape: &[u64], fortran: &[Json]) -> Json {
    fn go(shape: &[u64], strides: &[u64], offset: u64, fortran: &[Json]) -> Json {
        match shape.split_first() {
            None => fortran.get(offset as usize).cloned().unwrap_or(Json::Null),
            Some((&d, rest)) => Json::Array(
                (0..d).map(|i| go(rest, &strides[1..], offset + i * strides[0], fortran)).collect(),
            ),
        }
    }
    let mut strides = Vec::with_capacity(shape.len());
    let mut s = 1u64;
    for &d in shape {
        strides.push(s);
        s = s.saturating_mul(d);
    }
    go(shape, &strides, 0, fortran)
}

fn array_to_json(a: &Array) -> Json {
    let n = Array::element_count(&a.shape).unwrap_or(0) as usize;
    let elements: Vec<Json> = match &a.data {
        ArrayData::Objects(items) => items.iter().map(to_json).collect(),
        ArrayData::Raw(bytes) => {
            let size = a.dtype.item_size();
            let at = |i: usize| &bytes[i * size..(i + 1) * size];
            let element = |i: usize| -> Json {
                let b = at(i);
                match a.dtype {
                    Dtype::Bool => Json::Bool(b[0] != 0),
                    Dtype::Char => Json::String(
                        char::from_u32(u16::from_le_bytes([b[0], b[1]]) as u32)
                            .unwrap_or('\u{fffd}')
                            .to_string(),
                    ),
                    Dtype::F64 => float_element(f64::from_le_bytes(b.try_into().unwrap())),
                    Dtype::F32 => float32_element(f32::from_le_bytes(b.try_into().unwrap())),
                    Dtype::I8 => json!(b[0] as i8),
                    Dtype::U8 => json!(b[0]),
                    Dtype::I16 => json!(i16::from_le_bytes(b.try_into().unwrap())),
                    Dtype::U16 => json!(u16::from_le_bytes(b.try_into().unwrap())),
                    Dtype::I32 => json!(i32::from_le_bytes(b.try_into().unwrap())),
                    Dtype::U32 => json!(u32::from_le_bytes(b.try_into().unwrap())),
                    Dtype::I64 | Dtype::DateTime64(_) => json!(i64::from_le_bytes(b.try_into().unwrap())),
                    Dtype::U64 => json!(u64::from_le_bytes(b.try_into().unwrap())),
                    Dtype::Object => Json::Null,
                }
            };
            if a.complex {
                (0..n).map(|i| json!([element(i), element(n + i)])).collect()
            } else {
                (0..n).map(element).collect()
            }
        }
    };
    json!({"dtype": a.dtype.name(a.complex), "shape": a.shape, "data": nest(&a.shape, &elements)})
}

fn value(j: &Json, depth: usize) -> Result<Value, BlobError> {
    if depth >= MAX_DEPTH {
        return Err(BlobError::new(format!("the document nests deeper than {MAX_DEPTH} levels")));
    }
    let depth = depth + 1;
    Ok(match j {
        Json::Null => Value::None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            let text = n.to_string();
            if text.bytes().enumerate().all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-')) {
                Value::Int(decimal_to_int(&text)?)
            } else {
                Value::Float(text.parse().map_err(|_| BlobError::new(format!("{text} is not a number")))?)
            }
        }
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::List(items.iter().map(|i| value(i, depth)).collect::<Result<_, _>>()?),
        Json::Object(m) => {
            if m.len() == 3 {
                if let (Some(Json::String(dt)), Some(shape), Some(data)) =
                    (m.get("dtype"), m.get("shape"), m.get("data"))
                {
                    let (dtype, complex) =
                        Dtype::parse(dt).ok_or_else(|| BlobError::new(format!("unknown dtype {dt:?}")))?;
                    let shape = shape_of(shape)?;
                    return Ok(Value::Array(array_from_json(dtype, complex, Some(shape), data, depth)?));
                }
            }
            if m.len() == 1 {
                let (tag, inner) = m.iter().next().unwrap();
                if tag.starts_with('$') {
                    return tagged_value(tag, inner, depth);
                }
            }
            Value::Dict(
                m.iter()
                    .map(|(k, v)| Ok((Value::Str(k.clone()), value(v, depth)?)))
                    .collect::<Result<_, BlobError>>()?,
            )
        }
    })
}

fn text<'a>(tag: &str, j: &'a Json) -> Result<&'a str, BlobError> {
    j.as_str().ok_or_else(|| BlobError::new(format!("{tag} takes a string")))
}

fn list<'a>(tag: &str, j: &'a Json) -> Result<&'a Vec<Json>, BlobError> {
    j.as_array().ok_or_else(|| BlobError::new(format!("{tag} takes a list")))
}

fn tagged_value(tag: &str, j: &Json, depth: usize) -> Result<Value, BlobError> {
    let items = |j: &Json| -> Result<Vec<Value>, BlobError> {
        list(tag, j)?.iter().map(|i| value(i, depth)).collect()
    };
    Ok(match tag {
        "$bytes" => Value::Bytes(unhex(text(tag, j)?)?),
        "$decimal" => {
            let s = text(tag, j)?;
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c)) {
                return Err(BlobError::new(format!("{s:?} is not a decimal")));
            }
            Value::Decimal(s.to_string())
        }
        "$uuid" => {
            let h: String = text(tag, j)?.chars().filter(|c| *c != '-').collect();
            let b = unhex(&h)?;
            Value::Uuid(b.try_into().map_err(|_| BlobError::new("a UUID has 32 hex digits"))?)
        }
        "$datetime" => {
            let s = text(tag, j)?;
            let (d, t) = s
                .split_once('T')
                .or_else(|| s.split_once(' '))
                .ok_or_else(|| BlobError::new("$datetime is YYYY-MM-DDTHH:MM:SS[.ffffff]"))?;
            Value::DateTime { date: parse_date(d)?, time: parse_time(t)? }
        }
        "$date" => Value::DateTime { date: parse_date(text(tag, j)?)?, time: -1 },
        "$time" => Value::DateTime { date: -1, time: parse_time(text(tag, j)?)? },
        "$float" => Value::Float(match text(tag, j)? {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => {
                return Err(BlobError::new(format!("$float is NaN, Infinity or -Infinity, not {other:?}")))
            }
        }),
        "$complex" => match list(tag, j)?.as_slice() {
            [re, im] => Value::Complex(float_of(re)?, float_of(im)?),
            _ => return Err(BlobError::new("$complex is [re, im]")),
        },
        "$tuple" => Value::Tuple(items(j)?),
        "$set" => Value::Set(items(j)?),
        "$dict" => Value::Dict(
            list(tag, j)?
                .iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([k, v]) => Ok((value(k, depth)?, value(v, depth)?)),
                    _ => Err(BlobError::new("$dict is a list of [key, value] pairs")),
                })
                .collect::<Result<_, _>>()?,
        ),
        "$cell" => {
            let shape = shape_of(j.get("shape").ok_or_else(|| BlobError::new("$cell needs shape"))?)?;
            let data = j.get("data").ok_or_else(|| BlobError::new("$cell needs data"))?;
            let elements = flatten(&shape, data, &|leaf| value(leaf, depth))?;
            Value::Cell { shape, elements }
        }
        "$struct" => {
            let shape = shape_of(j.get("shape").ok_or_else(|| BlobError::new("$struct needs shape"))?)?;
            let fields: Vec<String> = list(tag, j.get("fields").unwrap_or(&Json::Null))?
                .iter()
                .map(|f| {
                    f.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| BlobError::new("$struct's fields are strings"))
                })
                .collect::<Result<_, _>>()?;
            let data = j.get("data").ok_or_else(|| BlobError::new("$struct needs data"))?;
            let elements = flatten(&shape, data, &|leaf| {
                fields
                    .iter()
                    .map(|f| {
                        value(
                            leaf.get(f).ok_or_else(|| {
                                BlobError::new(format!("a $struct element lacks field {f:?}"))
                            })?,
                            depth,
                        )
                    })
                    .collect()
            })?;
            Value::Struct { shape, fields, elements }
        }
        "$record" => Value::Record(
            list(tag, j)?
                .iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([Json::String(name), v]) => Ok((name.clone(), value(v, depth)?)),
                    _ => Err(BlobError::new("$record is a list of [field name, array] pairs")),
                })
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(BlobError::new(format!("unknown tag {other:?}"))),
    })
}

fn shape_of(j: &Json) -> Result<Vec<u64>, BlobError> {
    let dims = j.as_array().ok_or_else(|| BlobError::new("shape is a list of sizes"))?;
    let shape: Vec<u64> = dims
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| BlobError::new("shape is a list of sizes")))
        .collect::<Result<_, _>>()?;
    if Array::element_count(&shape).is_none_or(|n| n > super::MAX_BLOB_BYTES) {
        return Err(BlobError::new("the shape is too large"));
    }
    Ok(shape)
}

/// The shape of nested lists: the lengths along the first element at each level.
fn infer_shape(j: &Json, leaf_is_pair: bool) -> Vec<u64> {
    let mut shape = vec![];
    let mut at = j;
    while let Json::Array(items) = at {
        if leaf_is_pair && items.len() == 2 && items.iter().all(|i| !i.is_array()) {
            break;
        }
        shape.push(items.len() as u64);
        match items.first() {
            Some(first) => at = first,
            None => break,
        }
    }
    shape
}

/// Elements in Fortran order from nested lists in C order, checking every size against `shape`.
fn flatten<T>(
    shape: &[u64],
    data: &Json,
    leaf: &dyn Fn(&Json) -> Result<T, BlobError>,
) -> Result<Vec<T>, BlobError> {
    fn collect<'a>(shape: &[u64], j: &'a Json, out: &mut Vec<&'a Json>) -> Result<(), BlobError> {
        match shape.split_first() {
            None => {
                out.push(j);
                Ok(())
            }
            Some((&d, rest)) => {
                let items = j.as_array().filter(|a| a.len() as u64 == d).ok_or_else(|| {
                    BlobError::new(format!(
                        "the data is not a rectangular array of the shape (a list of {d} expected)"
                    ))
                })?;
                items.iter().try_for_each(|i| collect(rest, i, out))
            }
        }
    }
    let mut c_order = Vec::new();
    collect(shape, data, &mut c_order)?;
    let n = c_order.len();
    // C-order index → Fortran-order position.
    let mut fortran: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut index = vec![0u64; shape.len()];
    for item in c_order {
        let mut offset = 0u64;
        let mut stride = 1u64;
        for (k, &d) in shape.iter().enumerate() {
            offset += index[k] * stride;
            stride *= d;
        }
        fortran[offset as usize] = Some(leaf(item)?);
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    Ok(fortran.into_iter().map(|x| x.expect("every position filled")).collect())
}

fn float_of(j: &Json) -> Result<f64, BlobError> {
    match j {
        Json::Number(n) => n.as_f64().ok_or_else(|| BlobError::new(format!("{n} is not a float"))),
        Json::String(s) if s == "NaN" => Ok(f64::NAN),
        Json::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Json::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        other => Err(BlobError::new(format!("{other} is not a number"))),
    }
}

fn int_of(j: &Json, min: i128, max: i128, dtype: &str) -> Result<i128, BlobError> {
    let bad = || BlobError::new(format!("{j} is not a {dtype}"));
    let n = match j {
        Json::Number(n) => n.to_string().parse::<i128>().map_err(|_| bad())?,
        Json::Bool(b) => *b as i128,
        _ => return Err(bad()),
    };
    if n < min || n > max {
        return Err(BlobError::new(format!("{n} is out of range for {dtype}")));
    }
    Ok(n)
}

fn array_from_json(
    dtype: Dtype,
    complex: bool,
    shape: Option<Vec<u64>>,
    data: &Json,
    depth: usize,
) -> Result<Array, BlobError> {
    let name = dtype.name(complex);
    if complex && !matches!(dtype, Dtype::F64 | Dtype::F32) {
        return Err(BlobError::new("only float arrays can be complex"));
    }
    if dtype == Dtype::Object {
        let shape = shape.unwrap_or_else(|| match data {
            Json::Array(items) => vec![items.len() as u64],
            _ => vec![],
        });
        let items = flatten(&shape, data, &|leaf| value(leaf, depth))?;
        return Ok(Array { dtype, shape, complex, data: ArrayData::Objects(items) });
    }
    let shape = match shape {
        Some(s) => s,
        None if dtype == Dtype::Char => match data {
            // A string is a 1 × n char array, as MATLAB writes one.
            Json::String(s) => {
                let units: Vec<u16> = s.encode_utf16().collect();
                let bytes = units.iter().flat_map(|u| u.to_le_bytes()).collect();
                return Ok(Array::numeric(Dtype::Char, vec![1, units.len() as u64], bytes));
            }
            _ => infer_shape(data, false),
        },
        None => infer_shape(data, complex),
    };
    let encode_one = |j: &Json, out: &mut Vec<u8>| -> Result<(), BlobError> {
        match dtype {
            Dtype::Bool => match j {
                Json::Bool(b) => out.push(*b as u8),
                _ => out.push((int_of(j, 0, 1, &name)?) as u8),
            },
            Dtype::Char => {
                let s =
                    j.as_str().ok_or_else(|| BlobError::new("char elements are one-character strings"))?;
                let mut units = s.encode_utf16();
                match (units.next(), units.next()) {
                    (Some(u), None) => out.extend_from_slice(&u.to_le_bytes()),
                    _ => return Err(BlobError::new("char elements are one-character strings")),
                }
            }
            Dtype::F64 => out.extend_from_slice(&float_of(j)?.to_le_bytes()),
            Dtype::F32 => out.extend_from_slice(&(float_of(j)? as f32).to_le_bytes()),
            Dtype::I8 => out.push(int_of(j, i8::MIN as i128, i8::MAX as i128, &name)? as i8 as u8),
            Dtype::U8 => out.push(int_of(j, 0, u8::MAX as i128, &name)? as u8),
            Dtype::I16 => out.extend_from_slice(
                &(int_of(j, i16::MIN as i128, i16::MAX as i128, &name)? as i16).to_le_bytes(),
            ),
            Dtype::U16 => {
                out.extend_from_slice(&(int_of(j, 0, u16::MAX as i128, &name)? as u16).to_le_bytes())
            }
            Dtype::I32 => out.extend_from_slice(
                &(int_of(j, i32::MIN as i128, i32::MAX as i128, &name)? as i32).to_le_bytes(),
            ),
            Dtype::U32 => {
                out.extend_from_slice(&(int_of(j, 0, u32::MAX as i128, &name)? as u32).to_le_bytes())
            }
            Dtype::I64 | Dtype::DateTime64(_) => out.extend_from_slice(
                &(int_of(j, i64::MIN as i128, i64::MAX as i128, &name)? as i64).to_le_bytes(),
            ),
            Dtype::U64 => {
                out.extend_from_slice(&(int_of(j, 0, u64::MAX as i128, &name)? as u64).to_le_bytes())
            }
            Dtype::Object => unreachable!("object arrays are handled above"),
        }
        Ok(())
    };
    let leaves = flatten(&shape, data, &|leaf| Ok(leaf.clone()))?;
    let mut bytes = Vec::with_capacity(leaves.len() * dtype.item_size() * if complex { 2 } else { 1 });
    if complex {
        let mut imaginary = Vec::with_capacity(leaves.len() * dtype.item_size());
        for leaf in &leaves {
            let (re, im) = match leaf {
                Json::Array(p) if p.len() == 2 => (&p[0], &p[1]),
                other => (other, &Json::Null),
            };
            encode_one(re, &mut bytes)?;
            if im.is_null() {
                encode_one(&json!(0.0), &mut imaginary)?;
            } else {
                encode_one(im, &mut imaginary)?;
            }
        }
        bytes.extend_from_slice(&imaginary);
    } else {
        for leaf in &leaves {
            encode_one(leaf, &mut bytes)?;
        }
    }
    Ok(Array { dtype, shape, complex, data: ArrayData::Raw(bytes) })
}

fn unhex(s: &str) -> Result<Vec<u8>, BlobError> {
    let s = s.strip_prefix("\\x").unwrap_or(s);
    if s.len() % 2 != 0 {
        return Err(BlobError::new("hex text has an odd number of digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| BlobError::new(format!("{:?} is not hex", &s[i..i + 2])))
        })
        .collect()
}

fn parse_date(s: &str) -> Result<i32, BlobError> {
    let bad = || BlobError::new(format!("{s:?} is not a date (YYYY-MM-DD)"));
    let mut parts = s.splitn(3, '-').map(|p| p.parse::<i32>().map_err(|_| bad()));
    let (y, m, d) =
        (parts.next().ok_or_else(bad)??, parts.next().ok_or_else(bad)??, parts.next().ok_or_else(bad)??);
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok((y * 100 + m) * 100 + d)
}

fn parse_time(s: &str) -> Result<i64, BlobError> {
    let bad = || BlobError::new(format!("{s:?} is not a time (HH:MM:SS[.ffffff])"));
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (h, m, sec) =
        (parts.next().ok_or_else(bad)??, parts.next().ok_or_else(bad)??, parts.next().unwrap_or(Ok(0))?);
    if frac.len() > 6
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || h > 23
        || m > 59
        || sec > 59
        || h < 0
        || m < 0
        || sec < 0
    {
        return Err(bad());
    }
    let us = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse::<i64>().map_err(|_| bad())? };
    Ok(((h * 100 + m) * 100 + sec) * 1_000_000 + us)
}

/// Decimal text of a little-endian two's-complement integer of any width.
fn int_to_decimal(bytes: &[u8]) -> String {
    if let Some(v) = Value::as_i128(bytes) {
        return v.to_string();
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    // Magnitude, little-endian.
    let mut mag: Vec<u8> = if negative {
        let mut carry = 1u16;
        bytes
            .iter()
            .map(|b| {
                let s = (!b) as u16 + carry;
                carry = s >> 8;
                s as u8
            })
            .collect()
    } else {
        bytes.to_vec()
    };
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut().rev() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap()
}

/// datajoint-python's bytes for a decimal integer of any size: `bit_length // 8 + 1` bytes.
fn decimal_to_int(text: &str) -> Result<Vec<u8>, BlobError> {
    if let Ok(v) = text.parse::<i128>() {
        return Ok(match Value::int(v) {
            Value::Int(b) => b,
            _ => unreachable!(),
        });
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    if digits.len() > 150_000 {
        return Err(BlobError::new("integers are limited to 65 535 bytes"));
    }
    // Magnitude, little-endian.
    let mut mag: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u32;
        for b in mag.iter_mut() {
            let cur = *b as u32 * 10 + carry;
            *b = cur as u8;
            carry = cur >> 8;
        }
        if carry > 0 {
            mag.push(carry as u8);
        }
    }
    while mag.len() > 1 && *mag.last().unwrap() == 0 {
        mag.pop();
    }
    let bits = (mag.len() - 1) * 8 + (8 - mag.last().unwrap().leading_zeros() as usize);
    let n = bits / 8 + 1;
    mag.resize(n, 0);
    if negative {
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let s = (!*b) as u16 + carry;
            *b = s as u8;
            carry = s >> 8;
        }
    }
    if n > 0xffff {
        return Err(BlobError::new("integers are limited to 65 535 bytes"));
    }
    Ok(mag)
}
