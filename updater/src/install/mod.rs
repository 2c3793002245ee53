//! `abupdate apply`: the order of the steps (`apply`), which chunks a format 2 bundle's slot
//! can take from what the device holds (`delta`), and the chunk-by-chunk writer for that plan
//! (`delta_apply`). Used by `cmd::update`; uses `boot`, `disk`, `fetch`, `state` and the root's
//! `codes`, `fault`, `progress`.

pub mod apply;
pub mod delta;
pub mod delta_apply;
pub mod verity;
