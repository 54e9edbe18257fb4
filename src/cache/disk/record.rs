//! The head file: a checksummed record that vouches for one body file, then the stored head.
//!
//! ```text
//! magic 4 | format 1 | pad 3 | key 16 | body_len 8 | body_hash 8 | head_len 4 | record_hash 8
//! | block hashes 8 x n | head
//! ```
//! - A body of at most [`BLOCK`] bytes has no block table (n = 0): `body_hash` is the xxh3 of
//!   the whole body, so small objects are written exactly as format 1 wrote them.
//! - A larger body has one xxh3 per [`BLOCK`] bytes (n = ceil(body_len / BLOCK)) and `body_hash`
//!   is the xxh3 of the table: a large body is verified block by block as it is served, never
//!   read whole into memory.
//! - `record_hash` covers every byte of the file but itself.
//!
//! Format 1 (no block tables) is still read: its bodies are verified whole.

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const MAGIC: &[u8; 4] = b"OPHD";
/// The format this version writes.
const FORMAT: u8 = 2;
/// The fixed part of the record, up to the block table.
const FIXED: usize = 52;
const HASH_AT: usize = 44;
/// A body is checksummed (and streamed from disk) in blocks of this many bytes.
pub const BLOCK: u64 = 1 << 20;

/// How a body's bytes are vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyDigest {
    /// One xxh3 of the whole body.
    Whole(u64),
    /// One xxh3 per [`BLOCK`] bytes (the last block may be shorter).
    Blocks(Vec<u64>),
}

impl BodyDigest {
    /// The digest of `body`, as [`BlockHasher`] would compute it.
    pub fn of(body: &[u8]) -> BodyDigest {
        let mut h = BlockHasher::default();
        h.update(body);
        h.finish()
    }

    fn table(&self) -> &[u64] {
        match self {
            BodyDigest::Whole(_) => &[],
            BodyDigest::Blocks(t) => t,
        }
    }
}

/// Computes a [`BodyDigest`] over a body written in pieces.
#[derive(Default)]
pub struct BlockHasher {
    block: Xxh3,
    in_block: u64,
    done: Vec<u64>,
}

impl BlockHasher {
    /// Hash the next piece of the body.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((BLOCK - self.in_block) as usize).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take as u64;
            data = &data[take..];
            if self.in_block == BLOCK {
                self.done.push(self.block.digest());
                self.block.reset();
                self.in_block = 0;
            }
        }
    }

    /// The digest of everything hashed.
    pub fn finish(mut self) -> BodyDigest {
        if self.in_block > 0 || self.done.is_empty() {
            self.done.push(self.block.digest());
        }
        match self.done.len() {
            1 => BodyDigest::Whole(self.done[0]),
            _ => BodyDigest::Blocks(self.done),
        }
    }
}

/// A verified head file.
#[derive(Debug)]
pub struct HeadRecord {
    /// The stored head ([`crate::cache::entry`]).
    pub head: Bytes,
    /// The body's length in bytes.
    pub body_len: u64,
    /// How the body is verified.
    pub digest: BodyDigest,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn record_hash(file: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&file[..HASH_AT]);
    h.update(&file[FIXED..]);
    h.digest()
}

fn table_hash(table: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    for v in table {
        h.update(&v.to_le_bytes());
    }
    h.digest()
}

/// Number of block hashes a format-2 record holds for a body of `body_len` bytes.
fn blocks_for(body_len: u64) -> usize {
    if body_len <= BLOCK {
        0
    } else {
        body_len.div_ceil(BLOCK) as usize
    }
}

impl HeadRecord {
    /// The head file for `key`: this record (vouching for a body of `body_len` bytes with
    /// `digest`) followed by `head`.
    pub fn encode(key: u128, head: &[u8], body_len: u64, digest: &BodyDigest) -> Vec<u8> {
        let table = digest.table();
        let body_hash = match digest {
            BodyDigest::Whole(h) => *h,
            BodyDigest::Blocks(t) => table_hash(t),
        };
        let mut out = Vec::with_capacity(FIXED + 8 * table.len() + head.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[FORMAT, 0, 0, 0]);
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&body_hash.to_le_bytes());
        out.extend_from_slice(&(head.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        for h in table {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.extend_from_slice(head);
        let hash = record_hash(&out);
        out[HASH_AT..FIXED].copy_from_slice(&hash.to_le_bytes());
        out
    }

    /// Parse and verify the head file of `key`; the error says what is wrong with it.
    pub fn parse(key: u128, file: Bytes) -> Result<HeadRecord, &'static str> {
        if file.len() < FIXED || &file[..4] != MAGIC {
            return Err("head record truncated or not ours");
        }
        let format = file[4];
        if format != 1 && format != FORMAT {
            return Err("head record of an unknown format");
        }
        let mut k = [0u8; 16];
        k.copy_from_slice(&file[8..24]);
        if u128::from_le_bytes(k) != key {
            return Err("head record of another key");
        }
        let body_len = le_u64(&file[24..]);
        let body_hash = le_u64(&file[32..]);
        let head_len = u32::from_le_bytes([file[40], file[41], file[42], file[43]]) as usize;
        let blocks = if format == 1 { 0 } else { blocks_for(body_len) };
        let table_end = FIXED + 8 * blocks;
        if file.len() != table_end + head_len {
            return Err("head record length mismatch");
        }
        if le_u64(&file[HASH_AT..]) != record_hash(&file) {
            return Err("head record checksum mismatch");
        }
        let digest = if blocks == 0 {
            BodyDigest::Whole(body_hash)
        } else {
            let table: Vec<u64> = file[FIXED..table_end].chunks(8).map(le_u64).collect();
            BodyDigest::Blocks(table)
        };
        Ok(HeadRecord {
            head: file.slice(table_end..),
            body_len,
            digest,
        })
    }

    /// Check a whole body against this record.
    pub fn verify(&self, body: &[u8]) -> Result<(), &'static str> {
        if body.len() as u64 != self.body_len {
            return Err("body length mismatch (truncated?)");
        }
        let ok = match &self.digest {
            BodyDigest::Whole(h) => xxh3_64(body) == *h,
            BodyDigest::Blocks(t) => body
                .chunks(BLOCK as usize)
                .zip(t)
                .all(|(b, h)| xxh3_64(b) == *h),
        };
        if ok {
            Ok(())
        } else {
            Err("body checksum mismatch")
        }
    }

    /// Check block `index` (the bytes at `index * BLOCK`) of a block-hashed body.
    pub fn verify_block(&self, index: usize, block: &[u8]) -> Result<(), &'static str> {
        match &self.digest {
            BodyDigest::Blocks(t) if t.get(index) == Some(&xxh3_64(block)) => Ok(()),
            BodyDigest::Blocks(_) => Err("body block checksum mismatch"),
            BodyDigest::Whole(_) => Err("body is not block-hashed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_have_one_whole_hash_as_format_1_had() {
        for body in [&b""[..], b"body", &[7u8; BLOCK as usize][..]] {
            assert_eq!(BodyDigest::of(body), BodyDigest::Whole(xxh3_64(body)));
        }
        let file = HeadRecord::encode(7, b"HEAD", 4, &BodyDigest::of(b"body"));
        assert_eq!(file.len(), FIXED + 4);
        // a format-1 file is the same bytes with format 1 and its own checksum
        let mut v1 = file.clone();
        v1[4] = 1;
        let h = record_hash(&v1);
        v1[HASH_AT..FIXED].copy_from_slice(&h.to_le_bytes());
        let r = HeadRecord::parse(7, Bytes::from(v1)).expect("format 1 still reads");
        assert_eq!(r.digest, BodyDigest::Whole(xxh3_64(b"body")));
        assert!(r.verify(b"body").is_ok());
        assert!(r.verify(b"bodz").is_err());
    }

    #[test]
    fn large_bodies_are_hashed_per_block_however_they_are_written() {
        let body: Vec<u8> = (0..(2 * BLOCK + 123))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let whole = BodyDigest::of(&body);
        let mut pieces = BlockHasher::default();
        for piece in body.chunks(77_777) {
            pieces.update(piece);
        }
        assert_eq!(pieces.finish(), whole);
        let BodyDigest::Blocks(table) = &whole else {
            panic!("expected blocks");
        };
        assert_eq!(table.len(), 3);
        let file = HeadRecord::encode(9, b"H", body.len() as u64, &whole);
        let r = HeadRecord::parse(9, Bytes::from(file)).expect("valid");
        assert!(r.verify(&body).is_ok());
        assert!(r.verify_block(2, &body[2 * BLOCK as usize..]).is_ok());
        assert!(r.verify_block(1, &body[..BLOCK as usize]).is_err());
        let mut bad = body.clone();
        bad[BLOCK as usize + 5] ^= 1;
        assert!(r.verify(&bad).is_err());
    }

    #[test]
    fn every_single_byte_flip_and_cut_of_a_record_is_rejected() {
        let body = vec![3u8; BLOCK as usize + 10];
        for (len, digest) in [
            (4, BodyDigest::of(b"body")),
            (body.len() as u64, BodyDigest::of(&body)),
        ] {
            let file = Bytes::from(HeadRecord::encode(7, b"HEAD", len, &digest));
            let ok = HeadRecord::parse(7, file.clone()).expect("valid");
            assert_eq!(&ok.head[..], b"HEAD");
            assert_eq!(ok.body_len, len);
            assert_eq!(ok.digest, digest);
            assert!(HeadRecord::parse(8, file.clone()).is_err());
            for i in 0..file.len() {
                let mut bad = file.to_vec();
                bad[i] ^= 0x40;
                assert!(
                    HeadRecord::parse(7, Bytes::from(bad)).is_err(),
                    "flip at {i} accepted"
                );
            }
            for cut in 0..file.len() {
                assert!(
                    HeadRecord::parse(7, file.slice(..cut)).is_err(),
                    "cut at {cut}"
                );
            }
        }
    }
}
