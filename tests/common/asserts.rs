//! Assertions on `Cache-Status` shared by the black-box tests.

use super::{cs_get, cs_has, Fetched};

/// Served from cache as a fresh hit: `outpost; hit` with no `fwd`.
pub fn assert_hit(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs.starts_with("outpost") && cs_has(&cs, "hit") && cs_get(&cs, "fwd").is_none(),
        "{what}: expected a fresh hit, Cache-Status: {cs:?}"
    );
}

/// Fetched from the origin on a miss and stored.
pub fn assert_stored_miss(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs_get(&cs, "fwd").is_some_and(|f| f.ends_with("miss")) && cs_has(&cs, "stored"),
        "{what}: expected a stored miss, Cache-Status: {cs:?}"
    );
}
