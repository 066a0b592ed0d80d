//! Hashers for the request path's maps, chosen per key: what each key is
//! and who can choose it decides how much hashing it needs.
//!
//! Owns only hasher types; the maps live with their owners.

/// Hashes a key that is already a SHA-256 digest by its first eight bytes:
/// they are as good a hash as any, and SipHash over all 32 bytes was
/// measurable on every request. Nobody can choose a digest to collide
/// with another, so no keyed hash is needed.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    /// The length prefix of a `[u8; 32]` says nothing.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The `BuildHasher` of maps keyed by a digest.
pub type DigestState = std::hash::BuildHasherDefault<DigestHasher>;

/// The `BuildHasher` of maps whose entries only configuration or an
/// operator adds (a request may look any key up, but cannot fill the map
/// with colliding ones): foldhash, randomly seeded, much cheaper than
/// SipHash for short strings.
pub type AdminKeyed = foldhash::fast::RandomState;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn digest_hash_is_its_first_eight_bytes() {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&7u64.to_le_bytes());
        d[8] = 1;
        assert_eq!(DigestState::default().hash_one(d), 7);
        let mut e = d;
        e[0] = 8;
        assert_ne!(DigestState::default().hash_one(e), 7);
    }
}
