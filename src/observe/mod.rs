//! Watching a node as it runs: the heaviest keys of the recent traffic ([`topkeys`], kept by
//! the node, served on the admin API's `GET /top`).

pub mod topkeys;

pub use topkeys::TopKeys;
