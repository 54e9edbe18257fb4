//! Purges as bans, Varnish's model: a purge is recorded, durably, as a predicate with a time; a
//! stored object created before a ban that matches it is gone (hard purge) or stale (soft
//! purge) for every later request. Nothing is scanned when a purge arrives, whatever it covers:
//! bans are checked lazily when an object is looked up, newest first, only those newer than the
//! object.
//!
//! Contracts:
//! - Durable: a ban is appended to `<cache dir>/bans.jsonl` and synced before it is applied and
//!   acknowledged, and the file is read at start, so a purged object never comes back after a
//!   restart (its files may still be on disk: it is still banned). A record a crash damaged
//!   costs that record only: the other bans apply and later purges are still recorded, durably
//!   ([`crate::journal`]).
//! - An object matches an exact-URL ban by its primary cache key's host and path (so every
//!   `Vary` variant and both tiers), a prefix ban by host and path prefix, a tag ban by any tag in
//!   its stored tag header fields (`purge.tag_headers`, default `Surrogate-Key` and `Cache-Tag`;
//!   values separated by spaces or commas).
//! - Objects the origin confirmed after a ban (a refetch, a 304 revalidation) are not affected
//!   by it.
//! - Bans do not pile up: a background pass ([`lurker`]) applies them to every stored object
//!   (removing it, or making it stale for a soft purge: reclaiming disk space as it goes),
//!   makes that durable, then retires them from the list and the file.

use crate::cache::entry::{from_ms, to_ms};
use crate::journal::Journal;
use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub mod lurker;

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

/// A record line keeping the id sequence when the bans that used it are retired.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextId {
    next_id: u64,
}

/// A line of the purge record.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    Ban(Ban),
    NextId(NextId),
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

/// The host and the path-and-query of a primary cache key (`host \n path?query \n ...`).
fn split_key(key: &str) -> (&str, &str) {
    let (host, rest) = key.split_once('\n').unwrap_or((key, ""));
    (host, rest.split('\n').next().unwrap_or(""))
}

/// What the `bans` newer than `created_ms` say about an object with primary key `key` (if
/// known: otherwise every URL and prefix ban is taken to cover it) and stored header fields
/// `headers`.
fn verdict(
    bans: &[Ban],
    tag_headers: &[HeaderName],
    key: Option<&str>,
    created_ms: u64,
    headers: &HeaderMap,
) -> Option<Verdict> {
    let url = key.map(split_key);
    let mut verdict = None;
    for ban in bans.iter().rev() {
        // a ban covers what was confirmed in its own millisecond too: a purge issued right
        // after a fill (same ms) must not miss it; at worst an object is fetched once more
        if ban.at_ms < created_ms {
            break;
        }
        if ban.covers(tag_headers, url, headers) {
            if !ban.soft {
                return Some(Verdict::Gone);
            }
            // the oldest covering soft ban is when it went stale
            verdict = Some(Verdict::Stale {
                since: from_ms(ban.at_ms),
            });
        }
    }
    verdict
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
    /// Whether this ban covers an object of `url` (host and path; unknown: assumed covered by
    /// URL and prefix bans) with stored header fields `headers`.
    fn covers(
        &self,
        tag_headers: &[HeaderName],
        url: Option<(&str, &str)>,
        headers: &HeaderMap,
    ) -> bool {
        match &self.target {
            BanTarget::Url { host: h, path: p } => {
                url.is_none_or(|(host, path)| h == host && p == path)
            }
            BanTarget::Prefix { host: h, prefix } => url.is_none_or(|(host, path)| {
                h.as_deref().is_none_or(|h| h == host) && path.starts_with(prefix.as_str())
            }),
            BanTarget::Tags { tags } => has_tag(tag_headers, headers, tags),
            BanTarget::All => true,
        }
    }
}

/// The bans in force at one moment ([`BanList::snapshot`]).
pub struct Snapshot {
    bans: Arc<Vec<Ban>>,
    tag_headers: Vec<HeaderName>,
}

impl Snapshot {
    /// The id of the newest ban in it, if any.
    pub fn last_id(&self) -> Option<u64> {
        self.bans.last().map(|b| b.id)
    }

    /// What these bans say about an object stored under primary key `key` (`None` if the
    /// stored object does not record it: URL and prefix bans are then taken to cover it),
    /// confirmed by the origin at `created`, with stored header fields `headers`.
    pub fn judge(
        &self,
        key: Option<&str>,
        created: SystemTime,
        headers: &HeaderMap,
    ) -> Option<Verdict> {
        verdict(&self.bans, &self.tag_headers, key, to_ms(created), headers)
    }
}

/// The node's bans, in issue order, and the file that keeps them (opened only to append a
/// purge: no file of the cache directory is held open for writing between purges).
pub struct BanList {
    bans: arc_swap::ArcSwap<Vec<Ban>>,
    /// Serialises appends (and keeps ids and times in file order).
    log: Mutex<()>,
    journal: Option<Journal>,
    next_id: AtomicU64,
    tag_headers: Vec<HeaderName>,
}

impl BanList {
    /// Bans that live only in memory (no disk tier); objects are tagged by `tag_headers`.
    pub fn in_memory(tag_headers: Vec<HeaderName>) -> BanList {
        BanList {
            bans: arc_swap::ArcSwap::from_pointee(Vec::new()),
            log: Mutex::new(()),
            journal: None,
            next_id: AtomicU64::new(1),
            tag_headers,
        }
    }

    /// The bans recorded in `path` (created if missing). A damaged line (a write cut short by
    /// a crash) costs that line only ([`crate::journal`]); an unreadable or unwritable file is
    /// an error.
    pub fn open(path: &Path, tag_headers: Vec<HeaderName>) -> io::Result<BanList> {
        let (journal, records) = Journal::open::<Record>(path)?;
        // fail now, not at the first purge, if the file cannot be written
        journal.create()?;
        let mut bans = Vec::new();
        let mut next_id = 1;
        for record in records {
            match record {
                Record::Ban(ban) => bans.push(ban),
                Record::NextId(n) => next_id = next_id.max(n.next_id),
            }
        }
        bans.sort_by_key(|b| (b.at_ms, b.id));
        let next_id = next_id.max(bans.iter().map(|b| b.id).max().unwrap_or(0) + 1);
        Ok(BanList {
            bans: arc_swap::ArcSwap::from_pointee(bans),
            log: Mutex::new(()),
            journal: Some(journal),
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
        let persisted = match &self.journal {
            Some(journal) => journal.append(&ban),
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
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        // ids stay unique after the bans holding the highest ones are gone
        let next = NextId {
            next_id: self.next_id.load(Ordering::Relaxed),
        };
        journal.rewrite(
            std::iter::once(Record::NextId(next)).chain(bans.iter().cloned().map(Record::Ban)),
        )
    }

    /// What the bans say about an object stored under primary key `key`, last confirmed by the
    /// origin (stored or revalidated) at `created`, with stored response header fields
    /// `headers`. `None`: no ban covers it.
    pub fn check(&self, key: &str, created: SystemTime, headers: &HeaderMap) -> Option<Verdict> {
        let bans = self.bans.load();
        if bans.is_empty() {
            return None;
        }
        verdict(&bans, &self.tag_headers, Some(key), to_ms(created), headers)
    }

    /// The bans in force now, to judge stored objects against them alone.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bans: self.bans.load_full(),
            tag_headers: self.tag_headers.clone(),
        }
    }

    /// Retire the bans with ids up to `through` that were issued at or before `issued_by`:
    /// every stored object they cover has been removed or made stale, durably. The record is
    /// rewritten without them (if that fails they stay, and the error says why). Returns how
    /// many were retired.
    pub fn retire(&self, through: u64, issued_by: SystemTime) -> io::Result<usize> {
        let _appending = self.log.lock();
        let by_ms = to_ms(issued_by);
        let now = self.bans.load_full();
        let keep: Vec<Ban> = now
            .iter()
            .filter(|b| b.id > through || b.at_ms > by_ms)
            .cloned()
            .collect();
        let retired = now.len() - keep.len();
        if retired == 0 {
            return Ok(0);
        }
        self.rewrite(&keep)?;
        self.bans.store(Arc::new(keep));
        Ok(retired)
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
        // stored in the purge's own millisecond: covered (a fill just before it must go)
        let ban_at = from_ms(bans.snapshot().bans[0].at_ms);
        assert_eq!(bans.check(key, ban_at, &none), Some(Verdict::Gone));
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
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        std::io::Write::write_all(&mut f, b"{\"id\":9,\"at_ms\":12").expect("torn write");
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

    #[test]
    fn a_purge_record_torn_at_any_byte_costs_that_record_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = SystemTime::now() - Duration::from_secs(5);
        let tag = |t: &str| BanTarget::Tags {
            tags: vec![t.into()],
        };
        let tagged = |t: &str| headers(&[("surrogate-key", t)]);
        // the line a crash cut short: a tag purge of `café` (é is two bytes in UTF-8)
        let torn = {
            let ban = Ban {
                id: 2,
                at_ms: to_ms(SystemTime::now()),
                soft: false,
                target: tag("café"),
            };
            let mut line = serde_json::to_vec(&ban).expect("serialise");
            line.push(b'\n');
            line
        };
        for cut in 0..=torn.len() {
            let path = dir.path().join(format!("bans-{cut}.jsonl"));
            let bans = BanList::open(&path, default_tags()).expect("open");
            bans.add(tag("before"), false).1.expect("persisted");
            drop(bans);
            let mut text = std::fs::read(&path).expect("read");
            text.extend_from_slice(&torn[..cut]);
            std::fs::write(&path, text).expect("tear");

            let bans = BanList::open(&path, default_tags()).expect("reopen after the tear");
            let whole = cut + 1 >= torn.len();
            assert_eq!(bans.len(), 1 + usize::from(whole), "cut at {cut}");
            assert_eq!(
                bans.check("h\n/\n", old, &tagged("before")),
                Some(Verdict::Gone),
                "cut at {cut}: the purge before the torn one is lost"
            );
            bans.add(tag("after"), false).1.expect("persisted");
            drop(bans);

            let bans = BanList::open(&path, default_tags()).expect("third open");
            for t in ["before", "after"] {
                assert_eq!(
                    bans.check("h\n/\n", old, &tagged(t)),
                    Some(Verdict::Gone),
                    "cut at {cut}: purge {t}"
                );
            }
            assert_eq!(bans.len(), 2 + usize::from(whole), "cut at {cut}");
        }
    }

    #[test]
    fn retired_bans_leave_the_record_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bans.jsonl");
        let bans = BanList::open(&path, default_tags()).expect("open");
        let tags = |t: &str| BanTarget::Tags {
            tags: vec![t.into()],
        };
        for t in ["a", "b", "c"] {
            bans.add(tags(t), false).1.expect("persisted");
        }
        let now = SystemTime::now() + Duration::from_secs(1);
        let old = SystemTime::now() - Duration::from_secs(5);
        let b_tagged = headers(&[("Surrogate-Key", "b")]);
        // only those up to the given id, and only those issued by the given time
        assert_eq!(bans.retire(2, now).expect("retire"), 2);
        assert_eq!(bans.retire(3, old).expect("retire"), 0, "too recent");
        assert_eq!(bans.len(), 1);
        assert_eq!(bans.check("h\n/\n", old, &b_tagged), None);
        drop(bans);
        let bans = BanList::open(&path, default_tags()).expect("reopen");
        assert_eq!(bans.len(), 1, "the record was rewritten");
        assert_eq!(bans.retire(3, now).expect("retire"), 1);
        drop(bans);
        let bans = BanList::open(&path, default_tags()).expect("reopen empty");
        assert!(bans.is_empty());
        assert_eq!(bans.add(tags("d"), true).0.id, 4, "ids keep growing");
    }

    #[test]
    fn a_snapshot_judges_objects_without_a_known_key_conservatively() {
        let bans = BanList::in_memory(default_tags());
        let old = SystemTime::now() - Duration::from_secs(5);
        let _ = bans.add(
            BanTarget::Url {
                host: "a.com".into(),
                path: "/x".into(),
            },
            true,
        );
        let snap = bans.snapshot();
        let none = HeaderMap::new();
        assert!(matches!(
            snap.judge(None, old, &none),
            Some(Verdict::Stale { .. })
        ));
        assert_eq!(snap.judge(Some("a.com\n/y\n"), old, &none), None);
        let _ = bans.add(BanTarget::All, false);
        assert_eq!(snap.last_id(), Some(1), "a snapshot does not change");
        assert_eq!(snap.judge(Some("b.com\n/\n"), old, &none), None);
    }
}
