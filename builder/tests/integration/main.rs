//! Integration tests of `abbuild build`: the real binary against temporary directories, with
//! results checked by independent tools (sfdisk, sgdisk, mtools, fsck.fat, unsquashfs).
//! Tests that need Nix skip, saying so, when `nix-build` is not installed.

mod api;
mod disk;
mod errors;
mod grub;
mod keys_bundle;
mod nix;
mod publish;
mod repro;
mod util;
mod verity;
