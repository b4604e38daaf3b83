//! Transaction locks on objects, so garbage collection never removes an object a transaction
//! under way has written or found (and so will reference at its commit).
//!
//! A writer holds a shared lock on (store, key) from before it looks for the object until its
//! transaction ends; `dj.gc` takes the exclusive lock without waiting and leaves alone what it
//! cannot lock. The locks are advisory locks of a tag space SQL's `pg_advisory_*` functions do
//! not reach (field 4 is neither 1 nor 2). Keys share [`BUCKETS`] locks per store (by the md5 of
//! the key), so a transaction that writes a million objects holds at most that many entries of
//! the server's lock table; a shared bucket only makes gc skip an object until its next run.

use md5::{Digest, Md5};
use pgrx::pg_sys;

/// Field 4 of our advisory lock tags: "DJ".
const TAG_SPACE: u16 = 0x444a;

/// Locks per store.
pub const BUCKETS: u32 = 256;

fn tag(store: &str, key: &str) -> pg_sys::LOCKTAG {
    let s = Md5::digest(store.as_bytes());
    let mut h = Md5::new();
    h.update(store.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let d = h.finalize();
    pg_sys::LOCKTAG {
        // SAFETY: a plain read of the backend's database id.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        locktag_field3: u32::from_le_bytes([d[0], d[1], d[2], d[3]]) % BUCKETS,
        locktag_field4: TAG_SPACE,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Marks the object as in use by this transaction (waits while gc holds it).
pub fn hold(store: &str, key: &str) {
    let t = tag(store, key);
    // SAFETY: a transaction-level lock, released by the transaction's end (or its subtransaction's abort).
    unsafe { pg_sys::LockAcquire(&t, pg_sys::ShareLock as i32, false, false) };
}

/// Takes the object for collection unless a transaction holds it; true when taken.
pub fn try_take(store: &str, key: &str) -> bool {
    let t = tag(store, key);
    // SAFETY: as above, without waiting.
    let got = unsafe { pg_sys::LockAcquire(&t, pg_sys::ExclusiveLock as i32, false, true) };
    got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Gives back an object `try_take` took (before the transaction ends).
pub fn give_back(store: &str, key: &str) {
    let t = tag(store, key);
    // SAFETY: releases a lock this transaction holds.
    unsafe { pg_sys::LockRelease(&t, pg_sys::ExclusiveLock as i32, false) };
}

/// Whether a transaction under way holds the object (tried without waiting, and given back).
pub fn is_held(store: &str, key: &str) -> bool {
    if try_take(store, key) {
        give_back(store, key);
        false
    } else {
        true
    }
}
