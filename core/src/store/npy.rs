//! The header of a NumPy `.npy` file (what `<npy@store>` objects hold: `np.save(...,
//! allow_pickle=False)`), read for the reference's `dtype` and `shape`, as datajoint-python
//! records them (`str(array.dtype)`, `list(array.shape)`).

use super::{StoreError, StoreErrorKind};

/// Bytes enough for any header this accepts (numpy writes them 64-byte aligned and short).
pub const MAX_HEADER: usize = 64 * 1024;

/// What a reference records of an array.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyInfo {
    /// numpy's name of the dtype (`float64`, `<U5`, `datetime64[ns]`).
    pub dtype: String,
    pub shape: Vec<u64>,
}

fn bad(why: impl Into<String>) -> StoreError {
    StoreError::new(
        StoreErrorKind::Reference,
        format!("not a .npy file: {}", why.into()),
        "An <npy@store> attribute takes what numpy.save(f, array, allow_pickle=False) writes.",
    )
}

/// Reads the header at the start of `start` (the first [`MAX_HEADER`] bytes suffice).
pub fn header(start: &[u8]) -> Result<NpyInfo, StoreError> {
    if !start.starts_with(b"\x93NUMPY") || start.len() < 10 {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let (len, at) = match start[6] {
        1 => (u16::from_le_bytes([start[8], start[9]]) as usize, 10),
        2 | 3 if start.len() >= 12 => {
            (u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as usize, 12)
        }
        v => return Err(bad(format!("format version {v}"))),
    };
    let text = start.get(at..at + len).ok_or_else(|| bad("the header is cut short"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("the header is not text"))?;
    let descr = value_after(text, "'descr'").ok_or_else(|| bad("no descr"))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split_once('\''))
        .map(|(d, _)| d)
        .ok_or_else(|| bad("structured dtypes (a list as descr) are not supported"))?;
    if descr.trim_start_matches(['<', '>', '|', '=']).starts_with('O') {
        return Err(bad("object arrays hold pickles, which <npy@store> does not take"));
    }
    let shape = value_after(text, "'shape'").ok_or_else(|| bad("no shape"))?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad("the shape is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<u64>().map_err(|_| bad(format!("shape dimension {d:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    match value_after(text, "'fortran_order'") {
        Some(v) if v.starts_with("True") || v.starts_with("False") => {}
        _ => return Err(bad("no fortran_order")),
    }
    Ok(NpyInfo { dtype: dtype_name(descr), shape })
}

/// The text after `key` and its colon.
fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    Some(text[at..].trim_start().strip_prefix(':')?.trim_start())
}

/// `str(np.dtype(descr))` on a little-endian machine.
fn dtype_name(descr: &str) -> String {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('|', descr),
    };
    let native = order != '>';
    let named = match code {
        "b1" => Some("bool"),
        "i1" => Some("int8"),
        "u1" => Some("uint8"),
        "i2" => Some("int16"),
        "u2" => Some("uint16"),
        "i4" => Some("int32"),
        "u4" => Some("uint32"),
        "i8" => Some("int64"),
        "u8" => Some("uint64"),
        "f2" => Some("float16"),
        "f4" => Some("float32"),
        "f8" => Some("float64"),
        "f16" => Some("float128"),
        "c8" => Some("complex64"),
        "c16" => Some("complex128"),
        "c32" => Some("complex256"),
        _ => None,
    };
    match named {
        Some(n) if native || code.ends_with('1') => n.to_string(),
        _ if native && (code.starts_with("M8") || code.starts_with("m8")) => {
            let unit = &code[2..];
            format!("{}{unit}", if code.starts_with('M') { "datetime64" } else { "timedelta64" })
        }
        // Strings, bytes, voids and big-endian types print with their byte order.
        _ if code.starts_with('S') || code.starts_with('V') => format!("|{code}"),
        _ if order == '=' => format!("<{code}"),
        _ => format!("{order}{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str) -> Vec<u8> {
        let mut h = header.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out
    }

    #[test]
    fn headers_numpy_writes() {
        let h = header(&npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }")).unwrap();
        assert_eq!(h, NpyInfo { dtype: "float64".into(), shape: vec![2, 3] });
        let h = header(&npy("{'descr': '|u1', 'fortran_order': True, 'shape': (5,), }")).unwrap();
        assert_eq!(h, NpyInfo { dtype: "uint8".into(), shape: vec![5] });
        let h = header(&npy("{'descr': '<U7', 'fortran_order': False, 'shape': (), }")).unwrap();
        assert_eq!(h, NpyInfo { dtype: "<U7".into(), shape: vec![] });
        assert_eq!(
            header(&npy("{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (1,), }")).unwrap().dtype,
            "datetime64[ns]"
        );
        assert_eq!(
            header(&npy("{'descr': '>i4', 'fortran_order': False, 'shape': (1,), }")).unwrap().dtype,
            ">i4"
        );
        assert_eq!(
            header(&npy("{'descr': '|b1', 'fortran_order': False, 'shape': (1,), }")).unwrap().dtype,
            "bool"
        );
    }

    #[test]
    fn other_bytes_are_refused() {
        assert!(header(b"PK\x03\x04").is_err());
        assert!(header(&npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }")).is_err());
        assert!(header(&npy("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }")).is_err());
        assert!(header(&npy("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }")).is_err());
        let mut cut = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }");
        cut.truncate(20);
        assert!(header(&cut).is_err());
    }
}
