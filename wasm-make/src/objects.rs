//! Blobs and store objects in make functions.
//!
//! In-row `<blob>` and `<attach>` attributes arrive as bytes: [`Row::blob`] decodes a blob into
//! a [`blob::Value`] (numeric arrays as a dtype, a shape and their elements; [`Row::array`] gives
//! them as a `Vec<T>`), [`encode_blob`] makes the bytes to insert. Store attributes
//! (`<blob@store>`, `<attach@store>`, `<hash@store>`, `<object@store>`, `<npy@store>`,
//! `<filepath@store>`) arrive as the JSON reference to their object: [`Row::blob`] reads and decodes
//! a `<blob@store>` too, [`Reader`] streams any object in chunks (`std::io::Read`), [`info`] says
//! what it is. [`Upload`] writes an object for an attribute of the target or its parts, in chunks
//! (`std::io::Write`), and gives the reference to insert.
//!
//! ```ignore
//! let rec = fetch1(Query::new("Recording").attributes(["trace"]));
//! let (shape, trace) = rec.array::<f64>("trace")?;           // <blob> or <blob@store>
//! let mean = trace.iter().sum::<f64>() / trace.len() as f64;
//! let centered: Vec<f64> = trace.iter().map(|x| x - mean).collect();
//! let result = blob::Array::from_values(shape, &centered).ok_or("shape")?;
//! let reference = put_blob("Centered", "trace", &key, &blob::Value::Array(result))?;
//! insert1("Centered", key.with("trace", reference));
//! ```
//!
//! A make function reads only the objects of references in rows it fetched (from the target's
//! ancestors) and those it uploaded; what it reads counts against its memory limit.

use std::io;

use crate::bindings::datajoint::make::objects as wit;
use crate::{Row, Value};

pub use datajoint_blob as blob;
pub use wit::ObjectInfo;

/// Bytes asked for per host call when reading, and sent per call by [`put`].
pub const CHUNK: usize = 8 << 20;

/// What the object of `reference` (a store attribute's value as fetched) is.
pub fn info(reference: &str) -> ObjectInfo {
    wit::info(reference, None)
}

/// What file `member` of a folder object is.
pub fn member_info(reference: &str, member: &str) -> ObjectInfo {
    wit::info(reference, Some(member))
}

/// Reads an object (or a member of a folder object) in chunks of [`CHUNK`] bytes.
pub struct Reader {
    reference: String,
    member: Option<String>,
    offset: u64,
}

impl Reader {
    /// The object of `reference`.
    pub fn new(reference: impl Into<String>) -> Reader {
        Reader { reference: reference.into(), member: None, offset: 0 }
    }

    /// File `member` (a path relative to the folder, as its manifest lists it) of a folder object.
    pub fn member(reference: impl Into<String>, member: impl Into<String>) -> Reader {
        Reader { reference: reference.into(), member: Some(member.into()), offset: 0 }
    }

    /// Moves to byte `offset`.
    pub fn seek_to(&mut self, offset: u64) {
        self.offset = offset;
    }
}

impl io::Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(CHUNK) as u32;
        if want == 0 {
            return Ok(0);
        }
        let bytes = wit::read(&self.reference, self.member.as_deref(), self.offset, want);
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.offset += bytes.len() as u64;
        Ok(bytes.len())
    }
}

/// The whole object of `reference`.
pub fn read(reference: &str) -> Vec<u8> {
    // Reserved as the object says, within what a 32-bit guest can address; grown past that.
    let size = usize::try_from(info(reference).size).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if out.try_reserve_exact(size).is_err() {
        out.reserve(CHUNK);
    }
    let mut offset = 0;
    loop {
        let bytes = wit::read(reference, None, offset, CHUNK as u32);
        if bytes.is_empty() {
            return out;
        }
        offset += bytes.len() as u64;
        out.extend_from_slice(&bytes);
    }
}

/// A new object for `attribute` of `table` (the target or one of its parts) in the row whose
/// primary key is `key` (the current key's values fill in what it lacks), written in chunks.
/// `filename`: an attachment's name, or what gives an `<object@>` its extension.
pub struct Upload(wit::Upload);

impl Upload {
    pub fn new(table: &str, attribute: &str, key: &Row, filename: Option<&str>) -> Upload {
        let key: Vec<crate::Field> = key.fields().to_vec();
        Upload(wit::Upload::new(table, attribute, &key, filename))
    }

    /// Appends a chunk (any size; a few MiB per call is efficient).
    pub fn write_chunk(&self, chunk: &[u8]) {
        self.0.write(chunk);
    }

    /// Stores the object and returns the value to insert for the attribute (its reference).
    pub fn finish(self) -> Value {
        Value::Json(self.0.finish())
    }
}

impl io::Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stores `content` as a new object for `attribute` of `table` (see [`Upload`]); returns the
/// value to insert.
pub fn put(table: &str, attribute: &str, key: &Row, filename: Option<&str>, content: &[u8]) -> Value {
    let upload = Upload::new(table, attribute, key, filename);
    for chunk in content.chunks(CHUNK) {
        upload.write_chunk(chunk);
    }
    upload.finish()
}

/// Encodes `value` as DataJoint's blob, for a `<blob>` attribute (insert the bytes) or
/// `<blob@store>` (see [`put_blob`]).
pub fn encode_blob(value: &blob::Value) -> Result<Vec<u8>, String> {
    blob::pack(value).map_err(|e| e.message)
}

/// Decodes DataJoint's blob bytes.
pub fn decode_blob(bytes: &[u8]) -> Result<blob::Value, String> {
    blob::unpack(bytes).map_err(|e| e.message)
}

/// Stores `value` as the `<blob@store>` object of `attribute`; returns the value to insert.
pub fn put_blob(table: &str, attribute: &str, key: &Row, value: &blob::Value) -> Result<Value, String> {
    Ok(put(table, attribute, key, None, &encode_blob(value)?))
}

impl Row {
    /// The object reference an attribute holds (a store attribute's value, as fetched).
    pub fn reference(&self, name: &str) -> Result<String, String> {
        match self.value(name) {
            Some(Value::Json(text)) => Ok(text.clone()),
            Some(other) => {
                Err(format!("attribute `{name}`: expected an object reference (json), got {}", other.kind()))
            }
            None => Err(format!("no attribute `{name}` in {self}")),
        }
    }

    /// The blob an attribute holds: decoded from the row (`<blob>`) or read from its store and
    /// decoded (`<blob@store>`).
    pub fn blob(&self, name: &str) -> Result<blob::Value, String> {
        let decoded = match self.value(name) {
            Some(Value::Bytes(bytes)) => decode_blob(bytes),
            Some(Value::Json(reference)) => decode_blob(&read(reference)),
            Some(other) => return Err(format!("attribute `{name}`: expected a blob, got {}", other.kind())),
            None => return Err(format!("no attribute `{name}` in {self}")),
        };
        decoded.map_err(|e| format!("attribute `{name}`: {e}"))
    }

    /// The numeric array a blob attribute holds, as its shape and its elements in Fortran order
    /// (column-major, as numpy's `order='F'` and MATLAB keep them).
    pub fn array<T: blob::Element>(&self, name: &str) -> Result<(Vec<u64>, Vec<T>), String> {
        match self.blob(name)? {
            blob::Value::Array(a) => match a.values::<T>() {
                Some(values) => Ok((a.shape, values)),
                None => Err(format!(
                    "attribute `{name}`: the array is {}, not {}",
                    a.dtype.name(a.complex),
                    T::DTYPE.name(false)
                )),
            },
            _ => Err(format!("attribute `{name}`: the blob is not a numeric array")),
        }
    }
}
