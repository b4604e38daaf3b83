//! P5: DataJoint blob decode and encode speed of the core codec, on blobs datajoint-python packed
//! (tests/bench/objects.py writes them and times datajoint-python's own unpack and pack on the
//! same arrays).
//!
//!     cargo run --release -p datajoint-core --example blob_speed BLOB [REPEAT]
//!
//! Prints one line: `decode_mb_s encode_mb_s identical`, MB of the uncompressed array payload per
//! second (best of REPEAT), and whether re-encoding gave back the input byte for byte.

use std::time::Instant;

use datajoint_core::blob;

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args.next().expect("usage: blob_speed BLOB [REPEAT]");
    let repeat: usize = args.next().map(|r| r.parse().expect("a count")).unwrap_or(5);
    let bytes = std::fs::read(&file).expect("the blob file");
    let value = blob::unpack(&bytes).expect("a blob");
    let payload = match &value {
        blob::Value::Array(blob::Array { data: blob::ArrayData::Raw(raw), .. }) => raw.len() as f64,
        _ => bytes.len() as f64,
    };
    let (mut decode, mut encode) = (f64::MAX, f64::MAX);
    let mut identical = true;
    for _ in 0..repeat {
        let t = Instant::now();
        let v = blob::unpack(&bytes).expect("a blob");
        decode = decode.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let again = blob::pack(&v).expect("packs");
        encode = encode.min(t.elapsed().as_secs_f64());
        identical &= again == bytes;
    }
    println!("{:.1} {:.1} {}", payload / decode / 1e6, payload / encode / 1e6, identical);
}
