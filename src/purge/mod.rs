//! Purges as bans, Varnish's model: a purge is recorded, durably, as a predicate with a time; a
//! stored object created before a ban that matches it is gone (hard purge) or stale (soft
//! purge) for every later request. Nothing is scanned when a purge arrives, whatever it covers:
//! bans are checked lazily when an object is looked up, newest first, only those newer than the
//! object.
//!
//! Contracts:
//! - Durable: a ban is appended to `<cache dir>/bans.jsonl` and synced before it is applied and
//!   acknowledged, and the file is read at start, so a purged object never comes back after a
//!   restart (its files may still be on disk: it is still banned).
//! - An object matches an exact-URL ban by its primary cache key's host and path (so every
//!   `Vary` variant and both tiers), a prefix ban by host and path prefix, a tag ban by any tag in
//!   its stored tag header fields (`purge.tag_headers`, default `Surrogate-Key` and `Cache-Tag`;
//!   values separated by spaces or commas).
//! - Objects the origin confirmed after a ban (a refetch, a 304 revalidation) are not affected
//!   by it.

use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BanTarget {
    /// One URL: every stored variant of `host` + `path` (path and query as the cache key has
    /// them).
    Url {
        /// Normalised host.
        host: String,
        /// Path and query as in the cache key.
        path: String,
    },
    /// Every URL of `host` (any host if `None`) whose path starts with `prefix`.
    Prefix {
        /// Normalised host, or any.
        host: Option<String>,
        /// Path prefix.
        prefix: String,
    },
    /// Every object carrying one of these tags.
    Tags {
        /// The tags.
        tags: Vec<String>,
    },
    /// Everything stored.
    All,
}

/// One recorded purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// Sequence number, unique in this cache directory.
    pub id: u64,
    /// When it was issued, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Mark matching objects stale (revalidate) instead of removing them.
    pub soft: bool,
    /// What it covers.
    pub target: BanTarget,
}

/// What a ban does to an object it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hard purge: treat as absent.
    Gone,
    /// Soft purge: treat as stale from the purge's time on (revalidate; stale windows apply).
    Stale {
        /// When it became stale.
        since: SystemTime,
    },
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The host and the path-and-query of a primary cache key (`host \n path?query \n ...`).
fn split_key(key: &str) -> (&str, &str) {
    let (host, rest) = key.split_once('\n').unwrap_or((key, ""));
    (host, rest.split('\n').next().unwrap_or(""))
}

fn has_tag(tag_headers: &[HeaderName], headers: &HeaderMap, wanted: &[String]) -> bool {
    tag_headers.iter().any(|name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(|c: char| c == ',' || c.is_ascii_whitespace()))
            .any(|t| !t.is_empty() && wanted.iter().any(|w| w == t))
    })
}

impl Ban {
    fn covers(
        &self,
        tag_headers: &[HeaderName],
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        match &self.target {
            BanTarget::Url { host: h, path: p } => h == host && p == path,
            BanTarget::Prefix { host: h, prefix } => {
                h.as_deref().is_none_or(|h| h == host) && path.starts_with(prefix.as_str())
            }
            BanTarget::Tags { tags } => has_tag(tag_headers, headers, tags),
            BanTarget::All => true,
        }
    }
}

/// The node's bans, in issue order, and the file that keeps them (opened only to append a
/// purge: no file of the cache directory is held open for writing between purges).
pub struct BanList {
    bans: arc_swap::ArcSwap<Vec<Ban>>,
    /// Serialises appends (and keeps ids and times in file order).
    log: Mutex<()>,
    path: Option<PathBuf>,
    next_id: AtomicU64,
    tag_headers: Vec<HeaderName>,
}

impl BanList {
    /// Bans that live only in memory (no disk tier); objects are tagged by `tag_headers`.
    pub fn in_memory(tag_headers: Vec<HeaderName>) -> BanList {
        BanList {
            bans: arc_swap::ArcSwap::from_pointee(Vec::new()),
            log: Mutex::new(()),
            path: None,
            next_id: AtomicU64::new(1),
            tag_headers,
        }
    }

    /// The bans recorded in `path` (created if missing). A line that does not parse (a write
    /// cut short by a crash) is skipped with a warning; an unreadable file is an error.
    pub fn open(path: &Path, tag_headers: Vec<HeaderName>) -> io::Result<BanList> {
        let mut bans = Vec::new();
        match File::open(path) {
            Ok(f) => {
                for (n, line) in BufReader::new(f).lines().enumerate() {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Ban>(&line) {
                        Ok(ban) => bans.push(ban),
                        Err(e) => tracing::warn!(
                            file = %path.display(),
                            line = n + 1,
                            error = %e,
                            "skipping an unreadable purge record"
                        ),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        bans.sort_by_key(|b| (b.at_ms, b.id));
        let next_id = bans.iter().map(|b| b.id).max().unwrap_or(0) + 1;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        // fail now, not at the first purge, if the file cannot be written
        // a record torn by a crash must not swallow the next one
        let len = log.metadata()?.len();
        if len > 0 {
            use std::os::unix::fs::FileExt;
            let mut last = [0u8; 1];
            log.read_exact_at(&mut last, len - 1)?;
            if last[0] != b'\n' {
                log.write_all(b"\n")?;
            }
        }
        drop(log);
        Ok(BanList {
            bans: arc_swap::ArcSwap::from_pointee(bans),
            log: Mutex::new(()),
            path: Some(path.to_path_buf()),
            next_id: AtomicU64::new(next_id),
            tag_headers,
        })
    }

    /// Number of bans in force.
    pub fn len(&self) -> usize {
        self.bans.load().len()
    }

    /// Whether no ban is in force.
    pub fn is_empty(&self) -> bool {
        self.bans.load().is_empty()
    }

    /// Record and apply a purge of `target`. The ban is written and synced first; if that
    /// fails it is still applied (the content must go now) and the error says it will not
    /// survive a restart.
    pub fn add(&self, target: BanTarget, soft: bool) -> (Ban, io::Result<()>) {
        let _appending = self.log.lock();
        let ban = Ban {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            // never earlier than the newest ban: the list stays in time order
            at_ms: to_ms(SystemTime::now()).max(self.bans.load().last().map_or(0, |b| b.at_ms)),
            soft,
            target,
        };
        let persisted = match &self.path {
            Some(path) => serde_json::to_string(&ban)
                .map_err(io::Error::other)
                .and_then(|line| {
                    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
                    f.write_all(format!("{line}\n").as_bytes())?;
                    f.sync_data()
                })
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            None => Ok(()),
        };
        let next = if ban.target == BanTarget::All && !ban.soft {
            // everything confirmed before it is gone: the older bans can say nothing more
            let next = vec![ban.clone()];
            if persisted.is_ok() {
                if let Err(e) = self.rewrite(&next) {
                    tracing::warn!(error = %e, "could not compact the purge record (it stays longer)");
                }
            }
            next
        } else {
            let mut next: Vec<Ban> = self.bans.load().as_ref().clone();
            next.push(ban.clone());
            next
        };
        self.bans.store(Arc::new(next));
        (ban, persisted)
    }

    /// Replace the record with `bans` (written aside, synced, renamed over it).
    fn rewrite(&self, bans: &[Ban]) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("jsonl.tmp");
        let mut f = File::create(&tmp)?;
        for ban in bans {
            let line = serde_json::to_string(ban).map_err(io::Error::other)?;
            f.write_all(format!("{line}\n").as_bytes())?;
        }
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    }

    /// What the bans say about an object stored under primary key `key`, last confirmed by the
    /// origin (stored or revalidated) at `created`, with stored response header fields
    /// `headers`. `None`: no ban covers it.
    pub fn check(&self, key: &str, created: SystemTime, headers: &HeaderMap) -> Option<Verdict> {
        let bans = self.bans.load();
        if bans.is_empty() {
            return None;
        }
        let created_ms = to_ms(created);
        let (host, path) = split_key(key);
        let mut verdict = None;
        for ban in bans.iter().rev() {
            if ban.at_ms <= created_ms {
                break;
            }
            if ban.covers(&self.tag_headers, host, path, headers) {
                if !ban.soft {
                    return Some(Verdict::Gone);
                }
                // the oldest covering soft ban is when it went stale
                verdict = Some(Verdict::Stale {
                    since: UNIX_EPOCH + std::time::Duration::from_millis(ban.at_ms),
                });
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn default_tags() -> Vec<HeaderName> {
        vec![
            HeaderName::from_static("surrogate-key"),
            HeaderName::from_static("cache-tag"),
        ]
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn bans_cover_objects_created_before_them_only() {
        let bans = BanList::in_memory(default_tags());
        let before = SystemTime::now() - Duration::from_secs(5);
        let none = HeaderMap::new();
        let key = "example.com\n/a/b?x=1\n";
        assert_eq!(bans.check(key, before, &none), None);
        bans.add(
            BanTarget::Url {
                host: "example.com".into(),
                path: "/a/b?x=1".into(),
            },
            false,
        )
        .1
        .expect("in memory");
        assert_eq!(bans.check(key, before, &none), Some(Verdict::Gone));
        assert_eq!(bans.check("example.com\n/a/b\n", before, &none), None);
        assert_eq!(bans.check("other.com\n/a/b?x=1\n", before, &none), None);
        let after = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(
            bans.check(key, after, &none),
            None,
            "stored after the purge"
        );
    }

    #[test]
    fn prefix_tags_all_and_soft_bans_match_as_documented() {
        let bans = BanList::in_memory(default_tags());
        let old = SystemTime::now() - Duration::from_secs(5);
        let tagged = headers(&[("Surrogate-Key", "red  blue"), ("Cache-Tag", "x, y")]);
        let none = HeaderMap::new();
        let _ = bans.add(
            BanTarget::Prefix {
                host: Some("a.com".into()),
                prefix: "/static/".into(),
            },
            false,
        );
        let _ = bans.add(
            BanTarget::Tags {
                tags: vec!["blue".into()],
            },
            true,
        );
        assert_eq!(
            bans.check("a.com\n/static/x.css\n", old, &none),
            Some(Verdict::Gone)
        );
        assert_eq!(bans.check("b.com\n/static/x.css\n", old, &none), None);
        assert!(matches!(
            bans.check("b.com\n/p\n", old, &tagged),
            Some(Verdict::Stale { .. })
        ));
        assert_eq!(
            bans.check("b.com\n/p\n", old, &headers(&[("Cache-Tag", "bluex")])),
            None
        );
        let _ = bans.add(
            BanTarget::Tags {
                tags: vec!["y".into()],
            },
            false,
        );
        assert_eq!(
            bans.check("b.com\n/p\n", old, &tagged),
            Some(Verdict::Gone),
            "hard wins"
        );
        let _ = bans.add(BanTarget::All, false);
        assert_eq!(bans.check("z.com\n/\n", old, &none), Some(Verdict::Gone));
        assert_eq!(
            bans.len(),
            1,
            "a hard purge of everything makes older bans moot"
        );
    }

    #[test]
    fn bans_survive_reopening_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bans.jsonl");
        let old = SystemTime::now() - Duration::from_secs(5);
        {
            let bans = BanList::open(&path, default_tags()).expect("open");
            bans.add(
                BanTarget::Tags {
                    tags: vec!["t".into()],
                },
                false,
            )
            .1
            .expect("persisted");
        }
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(b"{\"id\":9,\"at_ms\":12").expect("torn write");
        drop(f);
        let bans = BanList::open(&path, default_tags()).expect("reopen");
        assert_eq!(bans.len(), 1);
        let tagged = headers(&[("surrogate-key", "t")]);
        assert_eq!(bans.check("h\n/\n", old, &tagged), Some(Verdict::Gone));
        let (ban, persisted) = bans.add(BanTarget::All, true);
        persisted.expect("persisted");
        assert_eq!(ban.id, 2);
        drop(bans);
        let bans = BanList::open(&path, default_tags()).expect("third open");
        assert_eq!(bans.len(), 2);
        // a hard purge of everything compacts the record to itself
        bans.add(BanTarget::All, false).1.expect("persisted");
        drop(bans);
        let bans = BanList::open(&path, default_tags()).expect("fourth open");
        assert_eq!(bans.len(), 1);
        assert_eq!(
            bans.check("h\n/\n", old, &HeaderMap::new()),
            Some(Verdict::Gone)
        );
        assert_eq!(bans.add(BanTarget::All, true).0.id, 4, "ids keep growing");
    }
}
