//! Numeric arrays as typed vectors: what a make function computes with.

use super::{Array, ArrayData, Dtype};

/// A Rust type numeric arrays hold: the dtype it is and its little-endian bytes.
pub trait Element: Copy {
    const DTYPE: Dtype;
    const SIZE: usize;
    fn read(le: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$d;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(le: &[u8]) -> Self {
                <$t>::from_le_bytes(le.try_into().expect("an element's bytes"))
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

element!(f64 => F64, f32 => F32, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32, i64 => I64, u64 => U64);

impl Array {
    /// The elements (Fortran order, as stored) when the array is a real array of `T`'s dtype.
    pub fn values<T: Element>(&self) -> Option<Vec<T>> {
        match &self.data {
            ArrayData::Raw(bytes) if self.dtype == T::DTYPE && !self.complex => {
                Some(bytes.chunks_exact(T::SIZE).map(T::read).collect())
            }
            _ => None,
        }
    }

    /// An array of `shape` from its elements in Fortran order (column-major, as numpy's
    /// `order='F'` and MATLAB keep them); None when their count is not the shape's.
    pub fn from_values<T: Element>(shape: Vec<u64>, values: &[T]) -> Option<Array> {
        if Array::element_count(&shape)? != values.len() as u64 {
            return None;
        }
        let mut data = Vec::with_capacity(values.len() * T::SIZE);
        for v in values {
            v.write(&mut data);
        }
        Some(Array::numeric(T::DTYPE, shape, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pack, unpack, Value};

    #[test]
    fn typed_values_round_trip_through_a_blob() {
        let a = Array::from_values(vec![2, 3], &[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap();
        let bytes = pack(&Value::Array(a)).unwrap();
        let Value::Array(back) = unpack(&bytes).unwrap() else { panic!("an array") };
        assert_eq!(back.shape, vec![2, 3]);
        assert_eq!(back.values::<f64>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        assert_eq!(back.values::<f32>(), None, "another dtype");
        assert!(Array::from_values(vec![4], &[1i16, 2, 3]).is_none(), "count and shape disagree");
    }

    #[test]
    fn ints_take_as_many_bytes_as_datajoint_python_gives_them() {
        // Python: n.bit_length() // 8 + 1 bytes, little-endian two's complement.
        let bytes = |v: i128| match Value::int(v) {
            Value::Int(b) => b,
            _ => unreachable!(),
        };
        assert_eq!(bytes(0), vec![0]);
        assert_eq!(bytes(255), vec![255, 0]);
        assert_eq!(bytes(-300), vec![0xd4, 0xfe]);
        assert_eq!(bytes(i128::MAX).len(), 16);
        let min = bytes(i128::MIN);
        assert_eq!(min.len(), 17);
        assert_eq!(min[16], 0xff);
        assert_eq!(Value::as_i128(&min), Some(i128::MIN));
        assert_eq!(
            Value::as_i128(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0]),
            None,
            "2^127 does not fit"
        );
    }

    #[test]
    fn large_arrays_compress_and_decode_with_either_zlib() {
        let ramp: Vec<i32> = (0..100_000).map(|i| i % 1000).collect();
        let bytes = pack(&Value::Array(Array::from_values(vec![100_000, 1], &ramp).unwrap())).unwrap();
        assert!(bytes.starts_with(b"ZL123\0"), "compressed");
        assert!(bytes.len() < 100_000);
        let Value::Array(back) = unpack(&bytes).unwrap() else { panic!("an array") };
        assert_eq!(back.values::<i32>().unwrap(), ramp);
    }
}
