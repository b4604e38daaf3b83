//! Machine code kept for other processes: sealed with a key only the server holds.
//!
//! wasmtime runs deserialized code as it is, so a process loads an artifact only when its seal
//! proves that this server's extension produced it from the module with that sha256 under that
//! engine: a row written any other way (by hand, by another server, from a dump) fails the check
//! and the module is compiled again.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a seal.
pub const SEAL_LEN: usize = 32;

fn mac(key: &[u8], sha256: &str, engine: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"datajoint artifact v1\0");
    mac.update(sha256.as_bytes());
    mac.update(b"\0");
    mac.update(engine.as_bytes());
    mac.update(b"\0");
    mac
}

/// The seal of `artifact`: machine code of the module `sha256` compiled under `engine`.
pub fn seal(key: &[u8], sha256: &str, engine: &str, artifact: &[u8]) -> Vec<u8> {
    let mut m = mac(key, sha256, engine);
    m.update(artifact);
    m.finalize().into_bytes().to_vec()
}

/// Whether `seal` is `artifact`'s seal for this module and engine (compared in constant time).
pub fn verify(key: &[u8], sha256: &str, engine: &str, artifact: &[u8], seal: &[u8]) -> bool {
    let mut m = mac(key, sha256, engine);
    m.update(artifact);
    m.verify_slice(seal).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_binds_key_module_engine_and_code() {
        let s = seal(b"key", "abc", "engine-1", b"code");
        assert_eq!(s.len(), SEAL_LEN);
        assert!(verify(b"key", "abc", "engine-1", b"code", &s));
        assert!(!verify(b"other key", "abc", "engine-1", b"code", &s));
        assert!(!verify(b"key", "abd", "engine-1", b"code", &s));
        assert!(!verify(b"key", "abc", "engine-2", b"code", &s));
        assert!(!verify(b"key", "abc", "engine-1", b"c0de", &s));
        assert!(!verify(b"key", "abc", "engine-1", b"code", &s[..31]));
        // The separators keep fields from sliding into each other.
        assert!(!verify(b"key", "ab", "cengine-1", b"code", &s));
    }
}
