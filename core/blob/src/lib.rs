//! DataJoint's `<blob>` serialization, byte for byte as datajoint-python 2.3.5's `blob.pack` writes
//! it and as its `blob.unpack` (and MATLAB's mYm) reads it.
//!
//! A blob is a protocol header (`mYm\0`, or `dj0\0` once a Python-only feature is used) and one
//! value; above 1 000 bytes it is stored as `ZL123\0` + the u64 length + a zlib stream when that is
//! smaller. Everything is little-endian. [`Value`] keeps whatever the bytes said (an integer's
//! width, a struct's field order, an array's dtype and Fortran-ordered data), so decoding and
//! re-encoding gives the same bytes; that is what makes `<blob@store>` hashes, and so
//! deduplication, agree with datajoint-python's. The extension's `datajoint_core::blob::json` is the view SQL users get.

//!
//! A crate of its own, free of everything but zlib, so that make functions (the guest SDK, built
//! for wasm32-wasip2) decode and encode blobs with the same code as the extension. The `zlib`
//! feature compresses with the system zlib, as datajoint-python does (byte-identical blobs, so
//! hash-addressed ones deduplicate); without it, flate2's Rust backend writes other but equally
//! valid zlib streams.

mod decode;
mod encode;
mod typed;

pub use decode::{looks_like_blob, unpack};
pub use encode::pack;
pub use typed::Element;

/// What can go wrong reading or building a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BlobError {
    pub message: String,
}

impl BlobError {
    pub fn new(message: impl Into<String>) -> Self {
        BlobError { message: message.into() }
    }
}

/// A blob larger than this (after decompression) is refused: PostgreSQL's values stop at 1 GiB.
pub const MAX_BLOB_BYTES: u64 = 1 << 30;

/// Nesting deeper than this is refused rather than risking the stack.
pub const MAX_DEPTH: usize = 200;

/// One value of DataJoint's serialization.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Python's unbounded int as stored: little-endian two's complement, `bit_length // 8 + 1`
    /// bytes (not always the fewest).
    Int(Vec<u8>),
    Float(f64),
    Complex(f64, f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Python's `Decimal`, as its `str()`.
    Decimal(String),
    Uuid([u8; 16]),
    /// `date` is yyyymmdd, `time` hhmmssuuuuuu; -1 when absent (a bare time or a bare date).
    DateTime {
        date: i32,
        time: i64,
    },
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Set(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Array(Array),
    /// MATLAB struct array: every element has every field.
    Struct {
        shape: Vec<u64>,
        fields: Vec<String>,
        elements: Vec<Vec<Value>>,
    },
    /// MATLAB cell array, elements in Fortran order.
    Cell {
        shape: Vec<u64>,
        elements: Vec<Value>,
    },
    /// numpy array with fields (a recarray): one array per field.
    Record(Vec<(String, Value)>),
}

impl Value {
    /// An int as datajoint-python packs it.
    pub fn int(v: i128) -> Value {
        let magnitude_bits = 128 - v.unsigned_abs().leading_zeros() as usize;
        let n = magnitude_bits / 8 + 1;
        // Up to 17 bytes (i128::MIN's magnitude needs 128 bits): sign-extended past the 16.
        let mut bytes = v.to_le_bytes().to_vec();
        bytes.resize(n, if v < 0 { 0xff } else { 0 });
        Value::Int(bytes)
    }

    /// The int's value when it fits in an i128.
    pub fn as_i128(mut bytes: &[u8]) -> Option<i128> {
        // Bytes past the 16th that only extend the sign (i128::MIN takes 17) say nothing more.
        while bytes.len() > 16 {
            let (last, rest) = bytes.split_last()?;
            let sign = if rest[rest.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
            if *last != sign {
                return None;
            }
            bytes = rest;
        }
        if bytes.is_empty() {
            return None;
        }
        let fill = if bytes[bytes.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut full = [fill; 16];
        full[..bytes.len()].copy_from_slice(bytes);
        Some(i128::from_le_bytes(full))
    }
}

/// An n-d array's element type: the `type_id`s of DataJoint's serialization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    /// MATLAB char (numpy `S1`), stored as u16 code units.
    Char,
    /// Each element is a blob of its own (numpy object and unicode arrays).
    Object,
    F64,
    F32,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    /// numpy `datetime64[unit]`, i64 counts of the unit; `unit` indexes [`DATETIME_UNITS`].
    DateTime64(u8),
}

/// The units of `datetime64`, in `type_id` order from 65 536.
pub const DATETIME_UNITS: [&str; 13] =
    ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as"];

impl Dtype {
    pub fn from_type_id(id: u32) -> Option<Dtype> {
        Some(match id {
            3 => Dtype::Bool,
            4 => Dtype::Char,
            5 => Dtype::Object,
            6 => Dtype::F64,
            7 => Dtype::F32,
            8 => Dtype::I8,
            9 => Dtype::U8,
            10 => Dtype::I16,
            11 => Dtype::U16,
            12 => Dtype::I32,
            13 => Dtype::U32,
            14 => Dtype::I64,
            15 => Dtype::U64,
            65_536..=65_548 => Dtype::DateTime64((id - 65_536) as u8),
            _ => return None,
        })
    }

    pub fn type_id(self) -> u32 {
        match self {
            Dtype::Bool => 3,
            Dtype::Char => 4,
            Dtype::Object => 5,
            Dtype::F64 => 6,
            Dtype::F32 => 7,
            Dtype::I8 => 8,
            Dtype::U8 => 9,
            Dtype::I16 => 10,
            Dtype::U16 => 11,
            Dtype::I32 => 12,
            Dtype::U32 => 13,
            Dtype::I64 => 14,
            Dtype::U64 => 15,
            Dtype::DateTime64(unit) => 65_536 + unit as u32,
        }
    }

    /// Bytes per stored element (per part, for complex arrays); 0 for object arrays.
    pub fn item_size(self) -> usize {
        match self {
            Dtype::Object => 0,
            Dtype::Bool | Dtype::I8 | Dtype::U8 => 1,
            Dtype::Char | Dtype::I16 | Dtype::U16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::DateTime64(_) => 8,
        }
    }

    /// numpy's name for the dtype (`complex` turns float64 into complex128).
    pub fn name(self, complex: bool) -> String {
        match (self, complex) {
            (Dtype::F64, true) => "complex128".into(),
            (Dtype::F32, true) => "complex64".into(),
            (Dtype::Bool, _) => "bool".into(),
            (Dtype::Char, _) => "char".into(),
            (Dtype::Object, _) => "object".into(),
            (Dtype::F64, _) => "float64".into(),
            (Dtype::F32, _) => "float32".into(),
            (Dtype::I8, _) => "int8".into(),
            (Dtype::U8, _) => "uint8".into(),
            (Dtype::I16, _) => "int16".into(),
            (Dtype::U16, _) => "uint16".into(),
            (Dtype::I32, _) => "int32".into(),
            (Dtype::U32, _) => "uint32".into(),
            (Dtype::I64, _) => "int64".into(),
            (Dtype::U64, _) => "uint64".into(),
            (Dtype::DateTime64(unit), _) => format!("datetime64[{}]", DATETIME_UNITS[unit as usize]),
        }
    }

    /// The dtype and complexness of a numpy dtype name.
    pub fn parse(name: &str) -> Option<(Dtype, bool)> {
        let plain = match name {
            "complex128" => return Some((Dtype::F64, true)),
            "complex64" => return Some((Dtype::F32, true)),
            "bool" => Dtype::Bool,
            "char" => Dtype::Char,
            "object" => Dtype::Object,
            "float64" | "double" => Dtype::F64,
            "float32" | "single" => Dtype::F32,
            "int8" => Dtype::I8,
            "uint8" => Dtype::U8,
            "int16" => Dtype::I16,
            "uint16" => Dtype::U16,
            "int32" => Dtype::I32,
            "uint32" => Dtype::U32,
            "int64" => Dtype::I64,
            "uint64" => Dtype::U64,
            other => {
                let unit = other.strip_prefix("datetime64[")?.strip_suffix(']')?;
                Dtype::DateTime64(DATETIME_UNITS.iter().position(|u| *u == unit)? as u8)
            }
        };
        Some((plain, false))
    }
}

/// An n-d array. `data` is in Fortran order, as stored; complex arrays hold every real part, then
/// every imaginary part.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub complex: bool,
    pub data: ArrayData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// Little-endian elements (u16 code units for char).
    Raw(Vec<u8>),
    /// Elements of an object array.
    Objects(Vec<Value>),
}

impl Array {
    /// Number of elements, or None when the shape's product overflows.
    pub fn element_count(shape: &[u64]) -> Option<u64> {
        shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// A numeric array from little-endian elements in Fortran order.
    pub fn numeric(dtype: Dtype, shape: Vec<u64>, data: Vec<u8>) -> Array {
        Array { dtype, shape, complex: false, data: ArrayData::Raw(data) }
    }
}
