//! Writing a blob as datajoint-python's `blob.pack(obj, compress=True)` does: the `mYm` header
//! unless a Python-only feature is used, compression above 1 000 bytes when it helps.

use std::io::Write;

use super::{Array, ArrayData, BlobError, Dtype, Value, MAX_DEPTH};

/// The blob of a value, compressed as datajoint-python compresses it.
pub fn pack(value: &Value) -> Result<Vec<u8>, BlobError> {
    let mut w = Writer { out: Vec::with_capacity(64), dj0: false, depth: 0 };
    w.out.extend_from_slice(b"mYm\0");
    w.value(value)?;
    if w.dj0 {
        w.out[..4].copy_from_slice(b"dj0\0");
    }
    let blob = w.out;
    if blob.len() > 1000 {
        // zlib.compress's defaults: level 6, a zlib header, a 32 KiB window (the same library,
        // so the same bytes).
        let mut z =
            flate2::write::ZlibEncoder::new(Vec::with_capacity(blob.len() / 2), flate2::Compression::new(6));
        z.write_all(&blob).map_err(|e| BlobError::new(e.to_string()))?;
        let deflated = z.finish().map_err(|e| BlobError::new(e.to_string()))?;
        if deflated.len() + 14 < blob.len() {
            let mut compressed = Vec::with_capacity(deflated.len() + 14);
            compressed.extend_from_slice(b"ZL123\0");
            compressed.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            compressed.extend_from_slice(&deflated);
            return Ok(compressed);
        }
    }
    Ok(blob)
}

struct Writer {
    out: Vec<u8>,
    dj0: bool,
    depth: usize,
}

impl Writer {
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn shape(&mut self, shape: &[u64]) {
        self.u64(shape.len() as u64);
        for &d in shape {
            self.u64(d);
        }
    }

    /// A value preceded by its length.
    fn item(&mut self, v: &Value) -> Result<(), BlobError> {
        let at = self.out.len();
        self.u64(0);
        self.value(v)?;
        let n = (self.out.len() - at - 8) as u64;
        self.out[at..at + 8].copy_from_slice(&n.to_le_bytes());
        Ok(())
    }

    fn sequence(&mut self, code: u8, items: &[Value]) -> Result<(), BlobError> {
        self.out.push(code);
        self.u64(items.len() as u64);
        items.iter().try_for_each(|v| self.item(v))
    }

    fn names(&mut self, names: &[&str]) {
        self.out.extend_from_slice(names.join("\0").as_bytes());
        self.out.push(0);
    }

    fn value(&mut self, v: &Value) -> Result<(), BlobError> {
        if self.depth >= MAX_DEPTH {
            return Err(BlobError::new(format!("the value nests deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        // Arrays, structs and cells are MATLAB's; every other value needs the dj0 header.
        if !matches!(v, Value::Array(_) | Value::Struct { .. } | Value::Cell { .. }) {
            self.dj0 = true;
        }
        match v {
            Value::None => self.out.push(0xff),
            Value::Bool(b) => self.out.extend_from_slice(&[0x0b, *b as u8]),
            Value::Int(bytes) => {
                if bytes.is_empty() || bytes.len() > 0xffff {
                    return Err(BlobError::new("integers are limited to 65 535 bytes"));
                }
                self.out.push(0x0a);
                self.out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                self.out.extend_from_slice(bytes);
            }
            Value::Float(f) => {
                self.out.push(0x0d);
                self.out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Complex(re, im) => {
                self.out.push(0x0c);
                self.out.extend_from_slice(&re.to_le_bytes());
                self.out.extend_from_slice(&im.to_le_bytes());
            }
            Value::Str(s) => self.bytes(0x05, s.as_bytes()),
            Value::Bytes(b) => self.bytes(0x06, b),
            Value::Decimal(s) => self.bytes(b'd', s.as_bytes()),
            Value::Uuid(u) => {
                self.out.push(b'u');
                self.out.extend_from_slice(u);
            }
            Value::DateTime { date, time } => {
                self.out.push(b't');
                self.out.extend_from_slice(&date.to_le_bytes());
                self.out.extend_from_slice(&time.to_le_bytes());
            }
            Value::Tuple(items) => self.sequence(0x01, items)?,
            Value::List(items) => self.sequence(0x02, items)?,
            Value::Set(items) => self.sequence(0x03, items)?,
            Value::Dict(pairs) => {
                self.out.push(0x04);
                self.u64(pairs.len() as u64);
                for (k, v) in pairs {
                    self.item(k)?;
                    self.item(v)?;
                }
            }
            Value::Array(a) => self.array(a)?,
            Value::Struct { shape, fields, elements } => {
                self.out.push(b'S');
                self.shape(shape);
                self.out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
                self.names(&fields.iter().map(String::as_str).collect::<Vec<_>>());
                for element in elements {
                    if element.len() != fields.len() {
                        return Err(BlobError::new("a struct element lacks some of the struct's fields"));
                    }
                    element.iter().try_for_each(|v| self.item(v))?;
                }
            }
            Value::Cell { shape, elements } => {
                self.out.push(b'C');
                self.shape(shape);
                elements.iter().try_for_each(|v| self.item(v))?;
            }
            Value::Record(fields) => {
                self.out.push(b'F');
                self.out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
                self.names(&fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
                for (_, v) in fields {
                    if !matches!(v, Value::Array(_) | Value::Record(_)) {
                        return Err(BlobError::new("a record's fields must be arrays"));
                    }
                    self.value(v)?;
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn bytes(&mut self, code: u8, b: &[u8]) {
        self.out.push(code);
        self.u64(b.len() as u64);
        self.out.extend_from_slice(b);
    }

    fn array(&mut self, a: &Array) -> Result<(), BlobError> {
        let n = Array::element_count(&a.shape).ok_or_else(|| BlobError::new("array shape overflows"))?;
        if matches!(a.dtype, Dtype::DateTime64(_)) {
            self.dj0 = true;
        }
        self.out.push(b'A');
        self.shape(&a.shape);
        self.out.extend_from_slice(&a.dtype.type_id().to_le_bytes());
        self.out.extend_from_slice(&(a.complex as u32).to_le_bytes());
        match &a.data {
            ArrayData::Objects(items) => {
                if a.dtype != Dtype::Object || items.len() as u64 != n {
                    return Err(BlobError::new("an object array's elements do not match its shape"));
                }
                items.iter().try_for_each(|v| self.item(v))?;
                self.dj0 = true;
            }
            ArrayData::Raw(bytes) => {
                let parts = if a.complex { 2 } else { 1 };
                if a.dtype == Dtype::Object || bytes.len() as u64 != n * a.dtype.item_size() as u64 * parts {
                    return Err(BlobError::new(format!(
                        "the array's data ({} bytes) does not match its shape and dtype {}",
                        bytes.len(),
                        a.dtype.name(a.complex)
                    )));
                }
                if a.shape.is_empty() && a.dtype != Dtype::Char {
                    self.dj0 = true;
                }
                self.out.extend_from_slice(bytes);
            }
        }
        Ok(())
    }
}
