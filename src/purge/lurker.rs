//! The ban lurker (Varnish's name for it): a background pass that applies the bans in force to
//! every stored object in both tiers — removing what a hard purge covers (so its disk space is
//! reclaimed), making stale what a soft purge covers — makes that durable, and then retires
//! the bans from the list and its file. Lookups stop paying for them, and the list stays as
//! short as the purges of the last pass.
//!
//! A ban is retired only when no object it covers can have escaped the pass: it must be older
//! than every object still on its way into the tiers when the pass started (those may land
//! behind it), with [`SETTLE`] to spare.

use super::{BanList, Verdict};
use crate::cache::entry::confirmed_at;
use crate::cache::tiered::{SweepAction, SweepReport, TieredStorage};
use std::io;
use std::time::{Duration, SystemTime};

/// Bans younger than this when a pass starts are kept for the next one: an object the origin
/// confirmed a moment before a ban is counted as arriving only once its fill starts.
pub const SETTLE: Duration = Duration::from_secs(2);

/// How long a pass waits for the disk writes it queued.
const FLUSH_WAIT: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassReport {
    /// Objects visited, removed and made stale.
    pub sweep: SweepReport,
    /// Bans retired.
    pub retired: usize,
}

/// Apply the bans in force to every stored object, then retire those that no object can have
/// escaped. `None`: nothing to do yet (no bans, or the disk directory is still being recovered, so
/// not every object can be visited). An error: the pass's changes could not be made durable;
/// no ban was retired.
pub async fn pass(
    bans: &BanList,
    storage: &'static TieredStorage,
) -> io::Result<Option<PassReport>> {
    if bans.is_empty() || storage.disk().is_some_and(|d| !d.index_complete()) {
        return Ok(None);
    }
    let started = SystemTime::now();
    let arriving = storage.oldest_arriving();
    let snapshot = bans.snapshot();
    let Some(through) = snapshot.last_id() else {
        return Ok(None);
    };
    let sweep = storage
        .sweep(move |stored| {
            let key = stored
                .primary
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok());
            match snapshot.judge(key, confirmed_at(&stored.meta), stored.meta.headers()) {
                None => SweepAction::Keep,
                Some(Verdict::Gone) => SweepAction::Remove,
                Some(Verdict::Stale { since }) => SweepAction::ExpireAt(since),
            }
        })
        .await;
    if let Some(disk) = storage.disk() {
        let disk = disk.clone();
        tokio::task::spawn_blocking(move || {
            if !disk.flush_queued_so_far(FLUSH_WAIT) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "queued disk cache writes did not land",
                ));
            }
            disk.sync()
        })
        .await
        .map_err(io::Error::other)??;
    }
    let horizon = arriving.map_or(started, |a| a.min(started));
    let issued_by = horizon.checked_sub(SETTLE).unwrap_or(horizon);
    let retired = bans.retire(through, issued_by)?;
    Ok(Some(PassReport { sweep, retired }))
}
