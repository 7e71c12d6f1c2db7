//! `X-Request-Id` values for requests that come without one: random UUIDv4-shaped ids from a
//! per-thread generator seeded once, instead of `MakeRequestUuid`'s `getrandom` system call on
//! every request (1% of the proxy's CPU, and a syscall nginx does not make).

use axum::http::{HeaderValue, Request};
use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use tower_http::request_id::{MakeRequestId, RequestId};

#[derive(Clone, Copy, Default)]
pub struct FastRequestId;

thread_local! {
    /// SplitMix64 state. `RandomState` is seeded from the OS once per thread.
    static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
}

fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A new id in UUID version 4 form (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub fn new_id() -> [u8; 36] {
    let hi = (next_u64() & !0xF000) | 0x4000; // version 4
    let lo = (next_u64() & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    let v = (u128::from(hi) << 64) | u128::from(lo);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut nibble = 32;
    for (i, c) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *c = b'-';
        } else {
            nibble -= 1;
            *c = HEX[((v >> (nibble * 4)) & 0xF) as usize];
        }
    }
    out
}

impl MakeRequestId for FastRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&new_id()).ok().map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_uuid_v4_shaped_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = new_id();
            let s = std::str::from_utf8(&id).expect("ascii");
            let parts: Vec<&str> = s.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(parts[2].starts_with('4'), "{s}");
            assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{s}");
            assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
            assert!(seen.insert(id), "duplicate {s}");
        }
        // Another thread starts from another seed.
        let other = std::thread::spawn(new_id).join().expect("thread");
        assert!(!seen.contains(&other));
    }
}
