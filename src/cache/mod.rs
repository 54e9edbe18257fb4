//! Cache mechanism and HTTP caching semantics: storage tiers behind pingora-cache's `Storage`,
//! RFC 9111 freshness and storage decisions, `Vary`, request directives and `Cache-Status`.

pub mod disk;
pub mod entry;
pub mod freshness;
pub mod memory;
pub mod partial;
pub mod ranges;
pub mod request;
pub mod status;
pub mod targeted;
pub mod tiered;
pub mod vary;

pub use disk::DiskTier;
pub use memory::MemoryTier;
pub use tiered::TieredStorage;

/// Whether a hit is read from the memory tier (else the disk tier).
pub fn is_memory_hit(handler: &pingora_cache::HitHandler) -> bool {
    memory::is_memory_hit(handler.as_any())
}
