//! Records of the segment log: one object (or one purge) each, self-describing and checksummed.
//!
//! ```text
//! magic 4 | kind 1 | pad 3 | key 16 | body_len 8 | body_hash 8 | head_len 4 | blocks 4
//! | gen 8 | header_hash 8 | block hashes 8 x blocks | head | body | pad to 8
//! ```
//! - `gen` is the generation of the segment the record starts in: a record read from a
//!   segment of another generation is not the one the directory meant.
//! - `header_hash` is an xxh3, seeded with the segment's random nonce, of the 56 bytes before
//!   it, the block table and the head. The seed makes a record impossible to forge from a body
//!   (an origin's bytes stored in a segment can never be read back as a record of their own,
//!   even by the scan that resynchronises after damage), and stale bytes of an older segment
//!   fail it.
//! - A body of at most [`BLOCK`] bytes has no block table: `body_hash` is the xxh3 of the
//!   whole body. A larger body has one xxh3 per [`BLOCK`] bytes and `body_hash` is the xxh3 of
//!   the table: it is verified block by block as it is served, never read whole into memory.
//! - A tombstone (a purge) has no head and no body: replaying the log after a crash removes
//!   the key, so a purged object is never served after a restart.

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const MAGIC: &[u8; 4] = b"OPR1";
/// The fixed part of a record, up to the block table.
pub const HEADER: usize = 64;
const HASH_AT: usize = 56;
/// Records start at multiples of this many bytes.
pub const ALIGN: u64 = 8;
/// A body is checksummed (and streamed from disk) in blocks of this many bytes.
pub const BLOCK: u64 = 1 << 20;
/// The largest stored head a record may claim (a sanity bound for damaged headers).
const MAX_HEAD: u32 = 16 << 20;

/// `n` rounded up to [`ALIGN`].
pub fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

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

    fn hash(&self) -> u64 {
        match self {
            BodyDigest::Whole(h) => *h,
            BodyDigest::Blocks(t) => table_hash(t),
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

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn table_hash(table: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    for v in table {
        h.update(&v.to_le_bytes());
    }
    h.digest()
}

fn header_hash(nonce: u64, prefix: &[u8]) -> u64 {
    let mut h = Xxh3::with_seed(nonce);
    h.update(&prefix[..HASH_AT]);
    h.update(&prefix[HEADER..]);
    h.digest()
}

/// Number of block hashes a record holds for a body of `body_len` bytes.
pub fn blocks_for(body_len: u64) -> u32 {
    if body_len <= BLOCK {
        0
    } else {
        u32::try_from(body_len.div_ceil(BLOCK)).unwrap_or(u32::MAX)
    }
}

/// What a record is (its code in the header's kind byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A stored object.
    Object = 1,
    /// A purge of the key.
    Tombstone = 2,
}

/// The fixed header of a record, read before its hash can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Object or tombstone.
    pub kind: Kind,
    /// The object's key.
    pub key: u128,
    /// The generation of the segment the record starts in.
    pub gen: u64,
    /// The body's length.
    pub body_len: u64,
    body_hash: u64,
    head_len: u32,
    blocks: u32,
}

impl Header {
    /// Read the fixed header at the start of `buf` (at least [`HEADER`] bytes); the error
    /// says why these bytes are not a record's start. Not verified yet: see [`Header::verify`].
    pub fn peek(buf: &[u8]) -> Result<Header, &'static str> {
        if buf.len() < HEADER || &buf[..4] != MAGIC {
            return Err("not a record");
        }
        let kind = match buf[4] {
            k if k == Kind::Object as u8 => Kind::Object,
            k if k == Kind::Tombstone as u8 => Kind::Tombstone,
            _ => return Err("record of an unknown kind"),
        };
        let mut k = [0u8; 16];
        k.copy_from_slice(&buf[8..24]);
        let h = Header {
            kind,
            key: u128::from_le_bytes(k),
            body_len: le_u64(&buf[24..]),
            body_hash: le_u64(&buf[32..]),
            head_len: le_u32(&buf[40..]),
            blocks: le_u32(&buf[44..]),
            gen: le_u64(&buf[48..]),
        };
        if h.head_len > MAX_HEAD || h.body_len > 1 << 48 || h.blocks != blocks_for(h.body_len) {
            return Err("record header out of range");
        }
        if kind == Kind::Tombstone && (h.head_len != 0 || h.body_len != 0) {
            return Err("record header out of range");
        }
        Ok(h)
    }

    /// Bytes of the header, block table and head.
    pub fn prefix_len(&self) -> u64 {
        HEADER as u64 + 8 * u64::from(self.blocks) + u64::from(self.head_len)
    }

    /// Bytes the record takes in the log (to the next record's start).
    pub fn span(&self) -> u64 {
        align(self.prefix_len() + self.body_len)
    }

    /// Verify the record's prefix (`prefix`: [`Header::prefix_len`] bytes from its start)
    /// against the segment's `nonce`: the parsed record, its body not yet checked.
    pub fn verify(&self, nonce: u64, prefix: Bytes) -> Result<Record, &'static str> {
        let len = self.prefix_len() as usize;
        if prefix.len() < len {
            return Err("record cut short");
        }
        let prefix = prefix.slice(..len);
        if le_u64(&prefix[HASH_AT..]) != header_hash(nonce, &prefix) {
            return Err("record checksum mismatch");
        }
        let table_end = HEADER + 8 * self.blocks as usize;
        let digest = if self.blocks == 0 {
            BodyDigest::Whole(self.body_hash)
        } else {
            let table: Vec<u64> = prefix[HEADER..table_end].chunks(8).map(le_u64).collect();
            if table_hash(&table) != self.body_hash {
                return Err("record block table mismatch");
            }
            BodyDigest::Blocks(table)
        };
        Ok(Record {
            header: *self,
            digest,
            head: prefix.slice(table_end..),
        })
    }
}

/// The prefix (header, block table, head) of an object record; its body follows it.
pub fn encode_object(
    key: u128,
    gen: u64,
    nonce: u64,
    head: &[u8],
    body_len: u64,
    digest: &BodyDigest,
    out: &mut Vec<u8>,
) {
    encode(Kind::Object, key, gen, nonce, head, body_len, digest, out);
}

/// A tombstone record for `key`.
pub fn encode_tombstone(key: u128, gen: u64, nonce: u64, out: &mut Vec<u8>) {
    encode(
        Kind::Tombstone,
        key,
        gen,
        nonce,
        &[],
        0,
        &BodyDigest::Whole(0),
        out,
    );
}

#[allow(clippy::too_many_arguments)]
fn encode(
    kind: Kind,
    key: u128,
    gen: u64,
    nonce: u64,
    head: &[u8],
    body_len: u64,
    digest: &BodyDigest,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    let table = digest.table();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&digest.hash().to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    for h in table {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(head);
    let hash = header_hash(nonce, &out[start..]);
    out[start + HASH_AT..start + HEADER].copy_from_slice(&hash.to_le_bytes());
}

/// Zero bytes that pad a record of `len` bytes to [`ALIGN`].
pub fn padding(len: u64) -> usize {
    (align(len) - len) as usize
}

/// A record whose prefix was verified.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its fixed header.
    pub header: Header,
    /// How the body is verified.
    pub digest: BodyDigest,
    /// The stored head ([`crate::cache::entry`]).
    pub head: Bytes,
}

impl Record {
    /// The body's length in bytes.
    pub fn body_len(&self) -> u64 {
        self.header.body_len
    }

    /// Check a whole body against this record.
    pub fn verify(&self, body: &[u8]) -> Result<(), &'static str> {
        if body.len() as u64 != self.header.body_len {
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

    fn parse(buf: &[u8], nonce: u64) -> Result<Record, &'static str> {
        let h = Header::peek(buf)?;
        h.verify(nonce, Bytes::copy_from_slice(buf))
    }

    #[test]
    fn small_bodies_have_one_whole_hash() {
        for body in [&b""[..], b"body", &[7u8; BLOCK as usize][..]] {
            assert_eq!(BodyDigest::of(body), BodyDigest::Whole(xxh3_64(body)));
        }
        let mut out = Vec::new();
        encode_object(7, 3, 99, b"HEAD", 4, &BodyDigest::of(b"body"), &mut out);
        assert_eq!(out.len(), HEADER + 4);
        let r = parse(&out, 99).expect("valid");
        assert_eq!(r.header.key, 7);
        assert_eq!(r.header.gen, 3);
        assert_eq!(&r.head[..], b"HEAD");
        assert_eq!(r.header.span(), align(HEADER as u64 + 8));
        assert!(r.verify(b"body").is_ok());
        assert!(r.verify(b"bodz").is_err());
        assert!(parse(&out, 98).is_err(), "another segment's nonce");
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
        let mut out = Vec::new();
        encode_object(9, 1, 5, b"H", body.len() as u64, &whole, &mut out);
        let r = parse(&out, 5).expect("valid");
        assert_eq!(r.header.prefix_len() as usize, out.len());
        assert!(r.verify(&body).is_ok());
        assert!(r.verify_block(2, &body[2 * BLOCK as usize..]).is_ok());
        assert!(r.verify_block(1, &body[..BLOCK as usize]).is_err());
        let mut bad = body.clone();
        bad[BLOCK as usize + 5] ^= 1;
        assert!(r.verify(&bad).is_err());
    }

    #[test]
    fn every_single_byte_flip_and_cut_of_a_prefix_is_rejected() {
        let body = vec![3u8; BLOCK as usize + 10];
        for (len, digest) in [
            (4, BodyDigest::of(b"body")),
            (body.len() as u64, BodyDigest::of(&body)),
        ] {
            let mut file = Vec::new();
            encode_object(7, 2, 11, b"HEAD", len, &digest, &mut file);
            let ok = parse(&file, 11).expect("valid");
            assert_eq!(&ok.head[..], b"HEAD");
            assert_eq!(ok.body_len(), len);
            assert_eq!(ok.digest, digest);
            for i in 0..file.len() {
                let mut bad = file.clone();
                bad[i] ^= 0x40;
                let parsed = parse(&bad, 11);
                assert!(parsed.is_err(), "flip at {i} accepted");
            }
            for cut in 0..file.len() {
                assert!(parse(&file[..cut], 11).is_err(), "cut at {cut}");
            }
        }
        let mut t = Vec::new();
        encode_tombstone(42, 8, 1, &mut t);
        let r = parse(&t, 1).expect("tombstone");
        assert_eq!(
            (r.header.kind, r.header.key, r.header.span()),
            (Kind::Tombstone, 42, 64)
        );
    }
}
