//! Names for full KV blocks, so that a block computed for one request can serve another.
//!
//! A block's KV depends on every token before it, not only its own, so its name is chained:
//! `hash(parent's hash, this block's token ids, extra keys)`. Two blocks with the same tokens
//! but different prefixes never share a name, and a hit on block `i` implies hits on `0..i`.
//! Extra keys are whatever else changes the KV for the same tokens (a cache salt that keeps
//! tenants apart, later a LoRA adapter id); they go into every block's hash, so no block of a
//! salted request can alias an unsalted one even if looked up on its own (e.g. in an offload
//! tier keyed by hash).
//!
//! The hash is SipHash-2-4 with 128-bit output and fixed keys, written out here rather than
//! taken from `std` (whose `DefaultHasher` algorithm may change between Rust releases), so that
//! names are stable across builds and machines and can key a disk tier. At 128 bits a chance
//! collision between distinct blocks is not a practical concern, so a hit is trusted without
//! comparing token ids.

use std::fmt;

/// The name of a full block of tokens, chained from its parent's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Inputs besides the tokens that change a block's KV.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtraKeys<'a> {
    /// Per-tenant salt: requests with different salts never share cached blocks.
    pub cache_salt: Option<&'a str>,
    /// Adapter whose weights produced the KV (reserved for multi-LoRA).
    pub lora_id: Option<u64>,
}

/// Fixed SipHash key: arbitrary, but must never change, or every stored name changes with it.
const KEY: (u64, u64) = (0x6665_7272_6f6c_6c6d, 0x626c_6f63_6b68_7368); // "ferrollm", "blockhsh"

impl BlockHash {
    /// Names the full block `tokens` whose predecessor is `parent` (`None` for the first block).
    pub fn of_block(parent: Option<BlockHash>, tokens: &[u32], extra: ExtraKeys<'_>) -> BlockHash {
        // Every field is tagged or length-prefixed, so no two different inputs encode alike.
        let mut h = SipHasher128::new(KEY.0, KEY.1);
        match parent {
            None => h.write(&[0]),
            Some(p) => {
                h.write(&[1]);
                h.write(&p.0.to_le_bytes());
            }
        }
        h.write(&(tokens.len() as u64).to_le_bytes());
        for &t in tokens {
            h.write(&t.to_le_bytes());
        }
        if let Some(salt) = extra.cache_salt {
            h.write(&[2]);
            h.write(&(salt.len() as u64).to_le_bytes());
            h.write(salt.as_bytes());
        }
        if let Some(id) = extra.lora_id {
            h.write(&[3]);
            h.write(&id.to_le_bytes());
        }
        BlockHash(h.finish128())
    }
}

/// The names of the full blocks of `tokens` (a trailing partial block has none).
pub fn hash_block_tokens(tokens: &[u32], block_size: usize, extra: ExtraKeys<'_>) -> Vec<BlockHash> {
    let mut parent = None;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let h = BlockHash::of_block(parent, block, extra);
            parent = Some(h);
            h
        })
        .collect()
}

/// SipHash-2-4 with 128-bit output (Aumasson & Bernstein), streaming over byte slices.
struct SipHasher128 {
    v: [u64; 4],
    /// Bytes not yet absorbed (fewer than 8), little-endian in the low bits.
    tail: u64,
    ntail: usize,
    length: u64,
}

impl SipHasher128 {
    fn new(k0: u64, k1: u64) -> Self {
        SipHasher128 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline]
    fn absorb(&mut self, m: u64) {
        self.v[3] ^= m;
        Self::round(&mut self.v);
        Self::round(&mut self.v);
        self.v[0] ^= m;
    }

    fn write(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len() as u64;
        // Top up a partial word first.
        while self.ntail > 0 && !bytes.is_empty() {
            self.tail |= u64::from(bytes[0]) << (8 * self.ntail);
            self.ntail += 1;
            bytes = &bytes[1..];
            if self.ntail == 8 {
                let m = self.tail;
                self.absorb(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let m = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.absorb(m);
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.ntail += words.remainder().len();
    }

    fn finish128(mut self) -> u128 {
        let b = ((self.length & 0xff) << 56) | self.tail;
        self.absorb(b);
        self.v[2] ^= 0xee;
        for _ in 0..4 {
            Self::round(&mut self.v);
        }
        let lo = self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3];
        self.v[1] ^= 0xdd;
        for _ in 0..4 {
            Self::round(&mut self.v);
        }
        let hi = self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3];
        u128::from(lo) | (u128::from(hi) << 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip128(msg: &[u8]) -> [u8; 16] {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let mut h = SipHasher128::new(k0, k1);
        h.write(msg);
        h.finish128().to_le_bytes()
    }

    /// `vectors_sip128` from the reference implementation (github.com/veorq/SipHash):
    /// key 00..0f, message 00..(len-1).
    #[test]
    fn siphash128_matches_reference_vectors() {
        let cases: [(usize, [u8; 16]); 6] = [
            (0, [0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55, 0x02, 0x93]),
            (1, [0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b, 0x22, 0xfc, 0x45]),
            (7, [0xa1, 0xf1, 0xeb, 0xbe, 0xd8, 0xdb, 0xc1, 0x53, 0xc0, 0xb8, 0x4a, 0xa6, 0x1f, 0xf0, 0x82, 0x39]),
            (8, [0x3b, 0x62, 0xa9, 0xba, 0x62, 0x58, 0xf5, 0x61, 0x0f, 0x83, 0xe2, 0x64, 0xf3, 0x14, 0x97, 0xb4]),
            (15, [0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11, 0x7e, 0x08, 0xec, 0x0f, 0x97, 0xcf, 0xc3, 0xd9]),
            (16, [0x6e, 0xe2, 0xa4, 0xca, 0x67, 0xb0, 0x54, 0xbb, 0xfd, 0x33, 0x15, 0xbf, 0x85, 0x23, 0x05, 0x77]),
        ];
        for (len, want) in cases {
            let msg: Vec<u8> = (0..len as u8).collect();
            assert_eq!(sip128(&msg), want, "length {len}");
        }
    }

    #[test]
    fn streaming_in_pieces_equals_one_write() {
        let msg: Vec<u8> = (0..=200u8).collect();
        for split in [0, 1, 3, 7, 8, 9, 64, 200] {
            let mut a = SipHasher128::new(1, 2);
            a.write(&msg[..split]);
            a.write(&msg[split..]);
            let mut b = SipHasher128::new(1, 2);
            b.write(&msg);
            assert_eq!(a.finish128(), b.finish128(), "split at {split}");
        }
    }

    #[test]
    fn names_are_stable_across_builds() {
        // Pinned: if this changes, every hash stored outside the process (offload tiers) is void.
        let h = BlockHash::of_block(None, &[1, 2, 3, 4], ExtraKeys::default());
        assert_eq!(h.to_string(), "4baa94e6214432c99487c23bc25c13e8");
    }

    #[test]
    fn same_tokens_under_a_different_parent_or_salt_get_a_different_name() {
        let none = ExtraKeys::default();
        let a = BlockHash::of_block(None, &[1, 2], none);
        let b = BlockHash::of_block(None, &[3, 4], none);
        assert_ne!(BlockHash::of_block(Some(a), &[5, 6], none), BlockHash::of_block(Some(b), &[5, 6], none));
        assert_ne!(BlockHash::of_block(None, &[5, 6], none), BlockHash::of_block(Some(a), &[5, 6], none));
        let salted = ExtraKeys { cache_salt: Some("tenant-a"), lora_id: None };
        let other = ExtraKeys { cache_salt: Some("tenant-b"), lora_id: None };
        assert_ne!(BlockHash::of_block(None, &[1, 2], salted), a);
        assert_ne!(BlockHash::of_block(None, &[1, 2], salted), BlockHash::of_block(None, &[1, 2], other));
        let lora = ExtraKeys { cache_salt: None, lora_id: Some(7) };
        assert_ne!(BlockHash::of_block(None, &[1, 2], lora), a);
    }

    #[test]
    fn only_full_blocks_are_named_and_names_chain() {
        let tokens: Vec<u32> = (0..37).collect();
        let hashes = hash_block_tokens(&tokens, 16, ExtraKeys::default());
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], BlockHash::of_block(None, &tokens[..16], ExtraKeys::default()));
        assert_eq!(hashes[1], BlockHash::of_block(Some(hashes[0]), &tokens[16..32], ExtraKeys::default()));
    }
}
