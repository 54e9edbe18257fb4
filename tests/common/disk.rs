//! Helpers for tests that look at the disk tier: its files, its writes landing, restarts.
//!
//! The tier's layout (see `src/cache/disk/`): `<cache>/segments/<slot:05>.seg` files, each
//! preallocated to its full size, starting with a 64-byte header (`OPSG`, format, generation,
//! nonce, slots, segment size, checksum), then records from offset 64 at 8-byte boundaries. A
//! record is a 64-byte header (`OPR1`, kind, key, body length, body hash, head length, block
//! count, generation, checksum), a block table (8 bytes per MiB of a body over 1 MiB), the
//! stored head, the body, zeros to the next 8-byte boundary. A record larger than what is left
//! of its segment runs on at offset 64 of the next generation's segment.
//!
//! [`records`] walks that log as written (it trusts the framing, not the checksums: it is for
//! finding an object's bytes, before a test damages them).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{wait_metric, Node};

/// Bytes of a segment's header; records start there.
pub const SEGMENT_HEADER: u64 = 64;
/// Bytes of a record's fixed header.
pub const RECORD_HEADER: u64 = 64;
/// A body over this many bytes has a block table (and is streamed) block by block.
pub const BLOCK: u64 = 1 << 20;

/// Every regular file under `dir`, recursively, sorted (none if `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&e.path())),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
    out.sort();
    out
}

/// The segment files `<cache>/segments/<5 digits>.seg`, sorted by slot.
pub fn segment_files(cache: &Path) -> Vec<PathBuf> {
    files_under(&cache.join("segments"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.strip_suffix(".seg")
                .is_some_and(|s| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// Bytes of disk `path` (and everything under it, for a directory) takes: allocated blocks,
/// as `du` counts them.
pub fn du(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            total += du(&entry.path());
        }
    }
    total
}

/// A listing of `dir` (path, length, allocated bytes) for failure messages.
pub fn listing(dir: &Path) -> String {
    files_under(dir)
        .iter()
        .map(|p| {
            let (len, alloc) = fs::metadata(p)
                .map(|m| (m.len(), m.blocks() * 512))
                .unwrap_or((0, 0));
            format!("  {} ({len} bytes, {alloc} allocated)", p.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A segment file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub gen: u64,
    /// Number of segment files of the ring.
    pub slots: u64,
    /// Bytes of each segment file.
    pub size: u64,
}

/// The header of the segment file at `path`, if it starts with one (`OPSG`).
pub fn segment_header(path: &Path) -> Option<Segment> {
    let f = fs::File::open(path).ok()?;
    let mut h = [0u8; SEGMENT_HEADER as usize];
    f.read_exact_at(&mut h, 0).ok()?;
    if &h[..4] != b"OPSG" {
        return None;
    }
    Some(Segment {
        path: path.to_path_buf(),
        gen: le_u64(&h, 8),
        slots: le_u64(&h, 24),
        size: le_u64(&h, 32),
    })
}

/// The segments under `cache` with a header, by generation.
pub fn segments(cache: &Path) -> BTreeMap<u64, Segment> {
    segment_files(cache)
        .iter()
        .filter_map(|p| segment_header(p))
        .map(|s| (s.gen, s))
        .collect()
}

/// Asserts the disk tier's files under `cache` are a ring of segments within `disk_size`: at
/// least one segment file, each named by its slot (its generation modulo the ring's slots),
/// with a header, its ring's size exactly (preallocated), of one ring whose slots times size
/// is at most `disk_size`, no more files than slots, and `segments/` taking at most
/// `disk_size` bytes of disk (with its own directory block). Returns them by generation.
pub fn assert_segments(cache: &Path, disk_size: u64, what: &str) -> Vec<Segment> {
    // a segment being made is a `<slot>.new` file until it is renamed over its slot's file:
    // give one being made by a running node a moment
    let start = std::time::Instant::now();
    let (files, all) = loop {
        let files = segment_files(cache);
        let all = files_under(&cache.join("segments"));
        if files.len() == all.len() || start.elapsed() > Duration::from_secs(5) {
            break (files, all);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !files.is_empty() && files.len() == all.len(),
        "{what}: expected segment files <slot:05>.seg (and nothing else) under {}/segments:\n{}",
        cache.display(),
        listing(cache)
    );
    let mut segs = Vec::new();
    for path in &files {
        let seg = segment_header(path)
            .unwrap_or_else(|| panic!("{what}: {} has no segment header", path.display()));
        let slot: u64 = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("slot number");
        assert!(
            seg.slots > 0 && seg.gen % seg.slots == slot,
            "{what}: {} holds generation {} of a ring of {} slots",
            path.display(),
            seg.gen,
            seg.slots
        );
        let meta = fs::metadata(path).expect("stat segment");
        assert_eq!(
            meta.len(),
            seg.size,
            "{what}: {} is not its ring's segment size",
            path.display()
        );
        assert!(
            meta.blocks() * 512 <= seg.size.next_multiple_of(4096),
            "{what}: {} takes {} bytes of disk for a {}-byte segment",
            path.display(),
            meta.blocks() * 512,
            seg.size
        );
        segs.push(seg);
    }
    let (slots, size) = (segs[0].slots, segs[0].size);
    assert!(
        segs.iter().all(|s| s.slots == slots && s.size == size),
        "{what}: segments of different rings: {segs:?}"
    );
    assert!(
        slots * size <= disk_size && files.len() as u64 <= slots,
        "{what}: {} segment files of a ring of {slots} x {size} bytes, disk_size {disk_size}",
        files.len()
    );
    let used = du(&cache.join("segments"));
    let dir_block = du_dir_only(&cache.join("segments"));
    assert!(
        used <= disk_size + dir_block,
        "{what}: segments/ takes {used} bytes of disk, over disk_size {disk_size}:\n{}",
        listing(cache)
    );
    segs.sort_by_key(|s| s.gen);
    segs
}

/// Bytes of disk the directory `dir` itself takes (not what is in it).
fn du_dir_only(dir: &Path) -> u64 {
    fs::symlink_metadata(dir).map_or(0, |m| m.blocks() * 512)
}

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Object,
    Tombstone,
}

/// A record found in the segment files.
#[derive(Clone)]
pub struct Record {
    pub kind: Kind,
    pub key: u128,
    /// The generation of the segment it starts in.
    pub gen: u64,
    /// The segment file it starts in.
    pub seg: PathBuf,
    /// Its offset in that file.
    pub offset: u64,
    pub body_len: u64,
    pub head_len: u64,
    pub blocks: u64,
    /// The stored head (an encoded response head: the primary cache key, field names other
    /// than well-known ones and values other than common ones are kept as text).
    pub head: Vec<u8>,
    /// The segments of generations `gen..` (a large record runs on into them).
    chain: Vec<Segment>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} record of key {:032x} at {}:{} (generation {}), body {} bytes, head {:?}",
            self.kind,
            self.key,
            self.seg.display(),
            self.offset,
            self.gen,
            self.body_len,
            String::from_utf8_lossy(&self.head)
        )
    }
}

impl Record {
    /// Bytes of the header, block table and head (the body follows).
    pub fn prefix_len(&self) -> u64 {
        RECORD_HEADER + 8 * self.blocks + self.head_len
    }

    /// Bytes the record takes in the log.
    pub fn span(&self) -> u64 {
        (self.prefix_len() + self.body_len).div_ceil(8) * 8
    }

    /// Where byte `at` of the record is: (segment file, offset in it).
    pub fn locate(&self, at: u64) -> (PathBuf, u64) {
        let size = self.chain[0].size;
        let (mut i, mut off, mut left) = (0usize, self.offset, at);
        while left >= size - off {
            left -= size - off;
            i += 1;
            off = SEGMENT_HEADER;
        }
        let seg = self.chain.get(i).unwrap_or_else(|| {
            panic!(
                "byte {at} of the record at {}:{} is past the segments found",
                self.seg.display(),
                self.offset
            )
        });
        (seg.path.clone(), off + left)
    }

    /// Where byte `at` of the body is.
    pub fn body_byte(&self, at: u64) -> (PathBuf, u64) {
        assert!(
            at < self.body_len,
            "byte {at} of a {}-byte body",
            self.body_len
        );
        self.locate(self.prefix_len() + at)
    }

    /// Where the head's first occurrence of `needle` is.
    pub fn head_text(&self, needle: &[u8]) -> Option<(PathBuf, u64)> {
        let i = memchr::memmem::find(&self.head, needle)?;
        Some(self.locate(RECORD_HEADER + 8 * self.blocks + i as u64))
    }

    /// Whether this is the record of the object at `path` (its head keeps the primary cache key,
    /// `<host>\n<path>`, followed by the status code's bytes).
    pub fn is_for(&self, path: &str) -> bool {
        let needle = format!("\n{path}");
        memchr::memmem::find_iter(&self.head, needle.as_bytes()).any(|i| {
            self.head
                .get(i + needle.len())
                .is_none_or(|b| !b.is_ascii_graphic())
        })
    }

    /// Whether the head holds `needle`.
    pub fn head_has(&self, needle: &str) -> bool {
        memchr::memmem::find(&self.head, needle.as_bytes()).is_some()
    }

    /// The record's bytes from `from`, `len` of them (across segments).
    pub fn read(&self, from: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut at = from;
        while at < from + len {
            let (path, off) = self.locate(at);
            let size = self.chain[0].size;
            let take = (size - off).min(from + len - at);
            let f = fs::File::open(&path).expect("open segment");
            let mut buf = vec![0u8; take as usize];
            f.read_exact_at(&mut buf, off).expect("read segment");
            out.extend_from_slice(&buf);
            at += take;
        }
        out
    }

    /// The body as it is in the segment files.
    pub fn body(&self) -> Vec<u8> {
        self.read(self.prefix_len(), self.body_len)
    }
}

/// The record header at `off` of `seg`, if there is one of that segment's generation.
fn record_at(seg: &Segment, file: &fs::File, off: u64) -> Option<(Kind, u128, u64, u64, u64)> {
    if off + RECORD_HEADER > seg.size {
        return None;
    }
    let mut h = [0u8; RECORD_HEADER as usize];
    file.read_exact_at(&mut h, off).ok()?;
    if &h[..4] != b"OPR1" || le_u64(&h, 48) != seg.gen {
        return None;
    }
    let kind = match h[4] {
        1 => Kind::Object,
        2 => Kind::Tombstone,
        _ => return None,
    };
    let key = u128::from_le_bytes(h[8..24].try_into().expect("16 bytes"));
    Some((
        kind,
        key,
        le_u64(&h, 24),
        u64::from(le_u32(&h, 40)),
        u64::from(le_u32(&h, 44)),
    ))
}

/// Every record in the segment files under `cache`, in log order: each segment's records from
/// its start (or from the end of a record that ran on into it) up to its unwritten part.
pub fn records(cache: &Path) -> Vec<Record> {
    let segs = segments(cache);
    let mut out = Vec::new();
    // where the next segment's records start, if a record ran on into it
    let mut resume: Option<(u64, u64)> = None;
    for (&gen, seg) in &segs {
        let mut off = match resume {
            // a record runs on through the whole of this segment
            Some((g, _)) if g > gen => continue,
            Some((g, o)) if g == gen => o,
            _ => SEGMENT_HEADER,
        };
        resume = None;
        let file = fs::File::open(&seg.path).expect("open segment");
        while let Some((kind, key, body_len, head_len, blocks)) = record_at(seg, &file, off) {
            let chain: Vec<Segment> = segs
                .range(gen..)
                .zip(gen..)
                .take_while(|((g, _), want)| **g == *want)
                .map(|((_, s), _)| s.clone())
                .collect();
            let mut head = vec![0u8; head_len as usize];
            let head_at = off + RECORD_HEADER + 8 * blocks;
            if file.read_exact_at(&mut head, head_at).is_err() {
                break;
            }
            let r = Record {
                kind,
                key,
                gen,
                seg: seg.path.clone(),
                offset: off,
                body_len,
                head_len,
                blocks,
                head,
                chain,
            };
            // advance as the log does: a record runs on at the next segment's data start
            let (mut g, mut o, mut left) = (gen, off, r.span());
            while left > seg.size - o {
                left -= seg.size - o;
                g += 1;
                o = SEGMENT_HEADER;
            }
            o += left;
            out.push(r);
            if g != gen {
                resume = Some((g, o));
                break;
            }
            off = o;
        }
    }
    out
}

/// The object records under `cache` whose head holds `needle`.
pub fn object_records(cache: &Path, needle: &str) -> Vec<Record> {
    records(cache)
        .into_iter()
        .filter(|r| r.kind == Kind::Object && r.head_has(needle))
        .collect()
}

/// The object records under `cache` of the object at `path` (see [`Record::is_for`]).
pub fn records_for(cache: &Path, path: &str) -> Vec<Record> {
    records(cache)
        .into_iter()
        .filter(|r| r.kind == Kind::Object && r.is_for(path))
        .collect()
}

/// The one object record under `cache` of the object at `path` (panics otherwise).
pub fn only_record_for(cache: &Path, path: &str) -> Record {
    let mut found = records_for(cache, path);
    assert_eq!(
        found.len(),
        1,
        "expected one object record of {path} under {}, found {}: {:?}\n{}",
        cache.display(),
        found.len(),
        found
            .iter()
            .map(|r| (r.seg.display().to_string(), r.offset, r.body_len))
            .collect::<Vec<_>>(),
        listing(cache)
    );
    found.remove(0)
}

/// Every occurrence of `needle` in the segment files under `cache`: (file, offset).
pub fn find_in_segments(cache: &Path, needle: &[u8]) -> Vec<(PathBuf, u64)> {
    let finder = memchr::memmem::Finder::new(needle);
    let mut out = Vec::new();
    for path in segment_files(cache) {
        let data = fs::read(&path).expect("read segment");
        out.extend(finder.find_iter(&data).map(|i| (path.clone(), i as u64)));
    }
    out
}

/// Invert the bits of `len` bytes of `path` from `at` (the file's other bytes and its length
/// unchanged).
pub fn flip_bytes(path: &Path, at: u64, len: usize) {
    xor_bytes(path, at, len, 0xFF);
}

/// Flip one bit pattern (0x20) of the byte at `at` of `path`.
pub fn flip_byte(path: &Path, at: u64) {
    flip_bits(path, at, 0x20);
}

/// Flip the bits of `mask` in the byte at `at` of `path`.
pub fn flip_bits(path: &Path, at: u64, mask: u8) {
    xor_bytes(path, at, 1, mask);
}

/// XOR `len` bytes of `path` from `at` with `mask` (the file's other bytes and its length
/// unchanged).
fn xor_bytes(path: &Path, at: u64, len: usize, mask: u8) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at)
        .unwrap_or_else(|e| panic!("read {}:{at}: {e}", path.display()));
    for x in &mut b {
        *x ^= mask;
    }
    f.write_all_at(&b, at)
        .unwrap_or_else(|e| panic!("write {}:{at}: {e}", path.display()));
}

/// Cut the file at `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {} to {len}: {e}", path.display()));
}

/// Waits (at most `limit`) until the disk tier reports at least `n` objects: the background
/// writes have landed.
pub fn wait_disk_objects(node: &Node, n: usize, limit: Duration, what: &str) {
    wait_metric(
        node,
        "outpost_cache_disk_objects",
        &[],
        |v| v >= n as f64,
        limit,
        what,
    );
}

/// Graceful stop that must succeed.
pub fn stop_ok(node: Node, what: &str) {
    let status = node.stop();
    assert!(
        status.success(),
        "{what}: graceful stop exited with {status}\n--- log (tail) ---\n{}",
        node.log_tail(60)
    );
}

/// Runs `program args`, returning its stderr on failure.
pub fn run(program: &str, args: &[&OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ))
    }
}

/// A tmpfs of `size` bytes mounted on `dir` (a disk that can be filled up). Unmounted on drop
/// (also when a test panics), lazily if it is busy.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mount it (the directory must exist); why not, if it cannot be.
    pub fn new(dir: &Path, size: u64) -> Result<SmallDisk, String> {
        let opts = format!("size={size}");
        run(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                "tmpfs".as_ref(),
                dir.as_os_str(),
            ],
        )?;
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the file system up with a file of zeros (written, so that its blocks are
    /// allocated) until it is full; its path.
    pub fn fill_up(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if run("umount", &[self.dir.as_os_str()]).is_err() {
            let _ = run("umount", &["-l".as_ref(), self.dir.as_os_str()]);
        }
    }
}
