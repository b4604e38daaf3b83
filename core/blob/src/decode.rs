//! Reading a blob. Every length and count is checked against the bytes left before anything is
//! allocated, so a hostile blob costs at most its own size (and a compressed one at most its
//! declared size, itself capped).

use std::io::Read;

use super::{Array, ArrayData, BlobError, Dtype, Value, MAX_BLOB_BYTES, MAX_DEPTH};

/// The value a blob holds.
pub fn unpack(blob: &[u8]) -> Result<Value, BlobError> {
    let inflated;
    let body = if let Some(rest) = blob.strip_prefix(b"ZL123\0") {
        inflated = inflate(rest)?;
        &inflated[..]
    } else {
        blob
    };
    let mut r = Reader { buf: body, pos: 0, depth: 0 };
    let nul = body.iter().position(|&b| b == 0).ok_or_else(|| BlobError::new("no protocol header"))?;
    let protocol = &body[..nul];
    if protocol != b"mYm" && protocol != b"dj0" {
        return Err(BlobError::new(format!(
            "the header is {:?}, not mYm or dj0",
            String::from_utf8_lossy(&protocol[..protocol.len().min(16)])
        )));
    }
    r.pos = nul + 1;
    let n = r.left();
    r.blob(Some(n))
}

/// Whether `start`, the first bytes of some content, begins as a blob does (a compressed one, or
/// the `mYm` or `dj0` header): the check streamed content gets, where the whole is never at hand.
pub fn looks_like_blob(start: &[u8]) -> bool {
    [&b"ZL123\0"[..], b"mYm\0", b"dj0\0"].iter().any(|h| start.starts_with(h))
}

fn inflate(rest: &[u8]) -> Result<Vec<u8>, BlobError> {
    if rest.len() < 8 {
        return Err(BlobError::new("truncated compressed blob"));
    }
    let size = u64::from_le_bytes(rest[..8].try_into().unwrap());
    if size > MAX_BLOB_BYTES {
        return Err(BlobError::new(format!(
            "the blob says it inflates to {size} bytes, over the 1 GiB limit"
        )));
    }
    let mut out = Vec::with_capacity(size.min(64 << 20) as usize);
    flate2::read::ZlibDecoder::new(&rest[8..])
        .take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| BlobError::new(format!("the blob's zlib stream is damaged: {e}")))?;
    if out.len() as u64 != size {
        return Err(BlobError::new(format!("blob size mismatch: expected {size}, got {}", out.len())));
    }
    Ok(out)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], BlobError> {
        if n > self.left() as u64 {
            return Err(BlobError::new(format!(
                "truncated blob: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.left()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, BlobError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BlobError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, BlobError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, BlobError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, BlobError> {
        Ok(self.u32()? as i32)
    }
    fn i64(&mut self) -> Result<i64, BlobError> {
        Ok(self.u64()? as i64)
    }
    fn f64(&mut self) -> Result<f64, BlobError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// A count of items each taking at least `min_bytes`: refused when the bytes left cannot hold it.
    fn count(&mut self, min_bytes: u64) -> Result<u64, BlobError> {
        let n = self.u64()?;
        if n.saturating_mul(min_bytes.max(1)) > self.left() as u64 {
            return Err(BlobError::new(format!("truncated blob: {n} items declared at offset {}", self.pos)));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, BlobError> {
        let n = self.u64()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BlobError::new("a string in the blob is not UTF-8"))
    }

    fn zero_terminated(&mut self) -> Result<String, BlobError> {
        let end = self.buf[self.pos..]
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| BlobError::new("truncated field name"))?;
        let s = std::str::from_utf8(&self.buf[self.pos..self.pos + end])
            .map_err(|_| BlobError::new("a field name is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s.to_string())
    }

    fn shape(&mut self) -> Result<Vec<u64>, BlobError> {
        let ndim = self.count(8)?;
        (0..ndim).map(|_| self.u64()).collect()
    }

    /// One value; with `n_bytes`, it must take exactly that many bytes.
    fn blob(&mut self, n_bytes: Option<usize>) -> Result<Value, BlobError> {
        if self.depth >= MAX_DEPTH {
            return Err(BlobError::new(format!("the blob nests deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let start = self.pos;
        let v = self.value()?;
        self.depth -= 1;
        if let Some(n) = n_bytes {
            if self.pos - start != n {
                return Err(BlobError::new(
                    "blob length check failed: an item's length does not match its content",
                ));
            }
        }
        Ok(v)
    }

    /// A length-prefixed value.
    fn item(&mut self) -> Result<Value, BlobError> {
        let n = self.u64()?;
        if n > self.left() as u64 {
            return Err(BlobError::new("truncated blob: an item is longer than what is left"));
        }
        self.blob(Some(n as usize))
    }

    fn items(&mut self) -> Result<Vec<Value>, BlobError> {
        let n = self.count(9)?;
        (0..n).map(|_| self.item()).collect()
    }

    fn value(&mut self) -> Result<Value, BlobError> {
        let code = self.u8()?;
        Ok(match code {
            b'A' => Value::Array(self.array()?),
            b'S' => self.structure()?,
            b'C' => {
                let shape = self.shape()?;
                let n = element_count(&shape)?;
                if n.saturating_mul(9) > self.left() as u64 {
                    return Err(BlobError::new("truncated cell array"));
                }
                let elements = (0..n).map(|_| self.item()).collect::<Result<_, _>>()?;
                Value::Cell { shape, elements }
            }
            b'F' => self.record()?,
            b'P' => return Err(BlobError::new("sparse arrays are not supported (nor by datajoint-python)")),
            0xff => Value::None,
            0x01 => Value::Tuple(self.items()?),
            0x02 => Value::List(self.items()?),
            0x03 => Value::Set(self.items()?),
            0x04 => {
                let n = self.count(18)?;
                let mut pairs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    pairs.push((self.item()?, self.item()?));
                }
                Value::Dict(pairs)
            }
            0x05 => Value::Str(self.string()?),
            0x06 => {
                let n = self.u64()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0x0a => {
                let n = self.u16()?;
                if n == 0 {
                    return Err(BlobError::new("an int of zero bytes"));
                }
                Value::Int(self.take(n as u64)?.to_vec())
            }
            0x0b => Value::Bool(self.u8()? != 0),
            0x0c => Value::Complex(self.f64()?, self.f64()?),
            0x0d => Value::Float(self.f64()?),
            b'd' => Value::Decimal(self.string()?),
            b't' => Value::DateTime { date: self.i32()?, time: self.i64()? },
            b'u' => Value::Uuid(self.take(16)?.try_into().unwrap()),
            other => return Err(BlobError::new(format!("unknown data structure code {other:#04x}"))),
        })
    }

    fn array(&mut self) -> Result<Array, BlobError> {
        let shape = self.shape()?;
        let n = element_count(&shape)?;
        let type_id = self.u32()?;
        let complex = self.u32()? != 0;
        let dtype = Dtype::from_type_id(type_id)
            .ok_or_else(|| BlobError::new(format!("unknown array type id {type_id}")))?;
        let data = if dtype == Dtype::Object {
            if n.saturating_mul(9) > self.left() as u64 {
                return Err(BlobError::new("truncated object array"));
            }
            ArrayData::Objects((0..n).map(|_| self.item()).collect::<Result<_, _>>()?)
        } else {
            let parts = if complex { 2 } else { 1 };
            let bytes = n
                .checked_mul(dtype.item_size() as u64 * parts)
                .ok_or_else(|| BlobError::new("array too large"))?;
            ArrayData::Raw(self.take(bytes)?.to_vec())
        };
        Ok(Array { dtype, shape, complex, data })
    }

    fn field_names(&mut self, n: u32) -> Result<Vec<String>, BlobError> {
        if n as usize > self.left() {
            return Err(BlobError::new("truncated field names"));
        }
        (0..n).map(|_| self.zero_terminated()).collect()
    }

    fn structure(&mut self) -> Result<Value, BlobError> {
        let shape = self.shape()?;
        let n = element_count(&shape)?;
        let n_fields = self.u32()?;
        let fields = self.field_names(n_fields)?;
        if fields.is_empty() {
            return Ok(Value::Struct { shape, fields, elements: vec![] });
        }
        if n.saturating_mul(9 * n_fields as u64) > self.left() as u64 {
            return Err(BlobError::new("truncated struct array"));
        }
        let elements =
            (0..n).map(|_| fields.iter().map(|_| self.item()).collect()).collect::<Result<_, _>>()?;
        Ok(Value::Struct { shape, fields, elements })
    }

    fn record(&mut self) -> Result<Value, BlobError> {
        let n_fields = self.u32()?;
        let names = self.field_names(n_fields)?;
        let mut fields = Vec::with_capacity(names.len());
        for name in names {
            fields.push((name, self.blob(None)?));
        }
        Ok(Value::Record(fields))
    }
}

fn element_count(shape: &[u64]) -> Result<u64, BlobError> {
    Array::element_count(shape).ok_or_else(|| BlobError::new("array shape overflows"))
}
