//! abupdate's integration tests: the real binary on disk images made by `abbuild`'s library,
//! checked with independent tools (sfdisk, mtools, fsck.fat, dd + sha256sum).

mod apply;
mod bad_disks;
mod channels;
mod commands;
mod corrupt;
#[cfg(feature = "fault-injection")]
mod crash;
mod delta;
mod downgrade;
mod esp_dirs;
mod esp_space;
mod fallback;
mod grow;
mod grub;
mod identity;
mod keysdir;
mod messages;
mod range_server;
mod refusals;
mod sources;
mod statefile;
mod util;
mod verity;
