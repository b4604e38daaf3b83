//! P5 diagnostics: where the time of a hash-checked read of a large object goes, on a file store.
//!
//!     cargo run --release -p datajoint-core --example store_speed FILE [REPEAT]
//!
//! FILE is placed in a file store under the system's temporary directory, then read out to
//! another file: by the kernel (no hash), through get_into (no hash), with the hash on the
//! reading thread, with the background hasher; and hashed alone. Prints seconds, best of REPEAT.

use std::io::Write;
use std::time::Instant;

use datajoint_core::store::address::{BackgroundHasher, Hasher};
use datajoint_core::store::{Home, Spec, Store};

fn best(repeat: usize, mut f: impl FnMut()) -> f64 {
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args.next().expect("usage: store_speed FILE [REPEAT]");
    let repeat: usize = args.next().map(|r| r.parse().expect("a count")).unwrap_or(3);
    let root = std::env::temp_dir().join("dj-store-speed");
    let _ = std::fs::remove_dir_all(&root);
    let spec = serde_json::json!({"protocol": "file", "location": root.to_str().unwrap()});
    let (spec, secrets) = Spec::parse(&spec).expect("a spec");
    let home = Home { data_directory: "/".into(), database: "speed".into() };
    let store = Store::open("speed", &spec, &secrets, &home).expect("a store");
    std::fs::copy(&file, root.join("object")).expect("the object");
    let out_path = root.join("out");
    let out = || std::fs::File::create(&out_path).expect("the output");

    let kernel = best(repeat, || {
        store.copy_into_file("object", &mut out(), &mut || Ok(())).unwrap();
    });
    // The object read out to a file, each chunk shown to `hash` first.
    let read_out = |hash: &mut dyn FnMut(&bytes::Bytes)| {
        let mut o = out();
        store
            .get_into("object", &mut |c| {
                hash(c);
                Ok(o.write_all(c).unwrap())
            })
            .unwrap();
    };
    let plain = best(repeat, || read_out(&mut |_| {}));
    let inline = best(repeat, || {
        let mut h = Hasher::default();
        read_out(&mut |c| h.update(c));
        h.finish();
    });
    let background = best(repeat, || {
        let mut h = BackgroundHasher::start();
        read_out(&mut |c| h.update(c));
        h.finish();
    });
    let hash_only = best(repeat, || {
        let mut h = Hasher::default();
        store.get_into("object", &mut |c| Ok(h.update(c))).unwrap();
        h.finish();
    });
    println!(
        "kernel {kernel:.2} s, get_into {plain:.2} s, hash inline {inline:.2} s, background {background:.2} s, hash only {hash_only:.2} s"
    );
    let _ = std::fs::remove_dir_all(&root);
}
