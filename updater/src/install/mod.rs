//! `abupdate apply`: the order of the steps (`apply`), which chunks a format 2 bundle's slot
//! can take from what the device holds (`delta`), and the one pipeline every apply writes
//! through (`pipeline`), fed by the bundle as a stream (`stream`) or by a plan's chunks
//! (`chunks`). Used by `cmd::update`; uses `boot`, `disk`, `fetch`, `state` and the root's
//! `codes`, `fault`, `progress`.

pub mod apply;
pub mod chunks;
pub mod delta;
pub mod pipeline;
pub mod stream;
pub mod verity;
