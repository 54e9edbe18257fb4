//! Journals: the append-only record files the node keeps in its cache directory and reads back
//! at start (`bans.jsonl`, the purge record; `cluster-outbox.jsonl`, purges waiting for the
//! fleet bus). One JSON record a line; a record is appended and synced on its own, and the file
//! is rewritten whole (written aside, synced, renamed over it) to drop records.
//!
//! Contracts:
//! - A damaged line costs that line only. A crash can leave the last line cut at any byte (even
//!   inside a multi-byte UTF-8 character), or a run of NUL bytes where the file system had not
//!   written the data yet; a copied or edited file can hold anything. Each line is parsed on its
//!   own, as bytes; a line that does not parse is skipped, and the rest of the file is used.
//!   One warning per damaged file gives the path and how many lines were skipped.
//! - A torn last line never swallows the next record: before anything is appended, a last line
//!   without its newline is cut off (or, if it is a whole record, terminated), durably.
//! - Appends and rewrites are durable when they return: the data is synced, and so is the
//!   directory when the file was created or renamed into place.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// An append-only file of JSON records, one a line.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
}

/// What reading a journal found.
struct Read<T> {
    records: Vec<T>,
    /// Lines skipped: they hold something that is not a record.
    skipped: usize,
    /// The first skipped line (1-based) and why it did not parse.
    first_damage: Option<(usize, String)>,
    /// The last line has no newline: where it starts, and whether it is a whole record.
    torn_tail: Option<(u64, bool)>,
}

/// The line without its newline and the padding a crash or an editor can leave around a
/// record (ASCII white space, NUL bytes); `None` if nothing else is left.
fn content(line: &[u8]) -> Option<&[u8]> {
    let pad = |b: &u8| b.is_ascii_whitespace() || *b == 0;
    let start = line.iter().position(|b| !pad(b))?;
    let end = line.iter().rposition(|b| !pad(b))?;
    Some(&line[start..=end])
}

/// Parse every line of `input`, skipping the ones that are not records.
fn read_records<T: DeserializeOwned>(input: impl BufRead) -> io::Result<Read<T>> {
    let mut input = input;
    let mut read = Read {
        records: Vec::new(),
        skipped: 0,
        first_damage: None,
        torn_tail: None,
    };
    let mut line = Vec::new();
    let mut offset = 0u64;
    for number in 1.. {
        line.clear();
        let n = input.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let terminated = line.last() == Some(&b'\n');
        let whole = match content(&line) {
            // blank lines are no damage, NUL bytes alone are
            None if line.iter().all(u8::is_ascii_whitespace) => false,
            None => {
                read.skipped += 1;
                read.first_damage
                    .get_or_insert((number, "NUL bytes".to_string()));
                false
            }
            Some(record) => match serde_json::from_slice::<T>(record) {
                Ok(record) => {
                    read.records.push(record);
                    true
                }
                Err(e) => {
                    read.skipped += 1;
                    read.first_damage.get_or_insert((number, e.to_string()));
                    false
                }
            },
        };
        if !terminated {
            read.torn_tail = Some((offset, whole));
        }
        offset += n as u64;
    }
    Ok(read)
}

/// `e` with the file it is about.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Sync the directory holding `path`, so that a file created or renamed there stays.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

impl Journal {
    /// Read the records of the journal at `path` (none if it does not exist) and make it ready
    /// for appends: damaged lines are skipped (one warning), a torn last line is cut off. An
    /// error: the file exists but cannot be read or repaired.
    pub fn open<T: DeserializeOwned>(path: &Path) -> io::Result<(Journal, Vec<T>)> {
        let journal = Journal {
            path: path.to_path_buf(),
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((journal, Vec::new())),
            Err(e) => return Err(at(path, e)),
        };
        let read = read_records::<T>(BufReader::new(file)).map_err(|e| at(path, e))?;
        if let Some((line, error)) = &read.first_damage {
            tracing::warn!(
                file = %path.display(),
                skipped = read.skipped,
                first_line = line,
                first_error = %error,
                "journal: skipped damaged lines (a crash while writing?); the rest is in use"
            );
        }
        if let Some((start, whole)) = read.torn_tail {
            journal.mend_tail(start, whole).map_err(|e| at(path, e))?;
        }
        Ok((journal, read.records))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// End the file at a whole line: terminate the last line if `whole`, else cut it off at
    /// `start`.
    fn mend_tail(&self, start: u64, whole: bool) -> io::Result<()> {
        let mut f = OpenOptions::new().append(true).open(&self.path)?;
        if whole {
            f.write_all(b"\n")?;
        } else {
            f.set_len(start)?;
        }
        f.sync_data()
    }

    /// Create the file (and its directory) if it does not exist, durably: fails now, not at
    /// the first append, if it cannot be written.
    pub fn create(&self) -> io::Result<()> {
        self.open_append().map(drop).map_err(|e| at(&self.path, e))
    }

    /// The file opened to append, created (durably) if missing.
    fn open_append(&self) -> io::Result<File> {
        match OpenOptions::new().append(true).open(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                sync_dir(&self.path)?;
                Ok(f)
            }
            opened => opened,
        }
    }

    /// Append `record` as one line and sync it.
    pub fn append<T: Serialize>(&self, record: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.open_append()
            .and_then(|mut f| {
                f.write_all(&line)?;
                f.sync_data()
            })
            .map_err(|e| at(&self.path, e))
    }

    /// Replace the file with `records`, one a line (written aside, synced, renamed over it);
    /// no records: the file is removed.
    pub fn rewrite<T: Serialize>(&self, records: impl IntoIterator<Item = T>) -> io::Result<()> {
        let mut text = Vec::new();
        for record in records {
            serde_json::to_writer(&mut text, &record).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        let replaced = if text.is_empty() {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                removed => removed,
            }
        } else {
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            File::create(&tmp)
                .and_then(|mut f| {
                    f.write_all(&text)?;
                    f.sync_data()
                })
                .and_then(|()| std::fs::rename(&tmp, &self.path))
        };
        replaced
            .and_then(|()| sync_dir(&self.path))
            .map_err(|e| at(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        id: u64,
        tag: String,
    }

    fn rec(id: u64, tag: &str) -> Rec {
        Rec {
            id,
            tag: tag.into(),
        }
    }

    fn line(r: &Rec) -> Vec<u8> {
        let mut l = serde_json::to_vec(r).expect("serialise");
        l.push(b'\n');
        l
    }

    #[test]
    fn a_damaged_line_costs_that_line_only_whatever_its_bytes() {
        let mut text = line(&rec(1, "a"));
        text.extend_from_slice(b"{\"id\":2,\"tag\":\"caf\xC3\n"); // torn, invalid UTF-8
        text.extend_from_slice(b"\xFF\xFEgarbage\n");
        text.extend_from_slice(&[0; 300]); // a NUL run where a record was
        text.push(b'\n');
        text.extend_from_slice(b"   \n\n");
        text.extend_from_slice(b"\0\0{\"id\":3,\"tag\":\"b\"}\r\n"); // padded, still whole
        text.extend_from_slice(b"{\"id\":4}\n"); // JSON, not a record
        text.extend_from_slice(&line(&rec(5, "café")));
        let read = read_records::<Rec>(&text[..]).expect("read");
        assert_eq!(read.records, vec![rec(1, "a"), rec(3, "b"), rec(5, "café")]);
        assert_eq!(read.skipped, 4);
        assert_eq!(read.first_damage.map(|(n, _)| n), Some(2));
        assert_eq!(read.torn_tail, None);
    }

    #[test]
    fn a_record_torn_at_every_byte_is_cut_off_and_the_next_append_stays_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let torn = line(&rec(2, "café"));
        for cut in 0..=torn.len() {
            let path = dir.path().join(format!("j{cut}.jsonl"));
            let mut text = line(&rec(1, "a"));
            text.extend_from_slice(&torn[..cut]);
            std::fs::write(&path, &text).expect("write");
            let (journal, records) = Journal::open::<Rec>(&path).expect("open");
            // the record counts once its JSON is whole, with or without its newline
            let mut expected = vec![rec(1, "a")];
            if cut + 1 >= torn.len() {
                expected.push(rec(2, "café"));
            }
            assert_eq!(records, expected, "cut at {cut}");
            journal.append(&rec(3, "b")).expect("append");
            let (_, records) = Journal::open::<Rec>(&path).expect("reopen");
            expected.push(rec(3, "b"));
            assert_eq!(records, expected, "cut at {cut}, reopened");
            let text = std::fs::read(&path).expect("read");
            assert!(
                text.split(|b| *b == b'\n')
                    .all(|l| l.is_empty() || serde_json::from_slice::<Rec>(l).is_ok()),
                "cut at {cut}: the torn tail was removed"
            );
        }
    }

    #[test]
    fn a_journal_is_created_on_demand_rewritten_and_removed_when_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/j.jsonl");
        let (journal, records) = Journal::open::<Rec>(&path).expect("absent");
        assert!(records.is_empty() && !path.exists());
        journal.create().expect("create");
        assert!(path.exists());
        for i in 1..=3 {
            journal.append(&rec(i, "x")).expect("append");
        }
        journal.rewrite([rec(3, "x")]).expect("rewrite");
        let (journal, records) = Journal::open::<Rec>(&path).expect("reopen");
        assert_eq!(records, vec![rec(3, "x")]);
        journal.rewrite(Vec::<Rec>::new()).expect("empty");
        assert!(!path.exists());
    }
}
