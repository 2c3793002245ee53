//! The on-disk contract between `abbuild` and `abupdate`: the update bundle (`.abu`).
//!
//! A bundle is one file that can be read front to back as a stream:
//!
//! ```text
//! header (64 bytes) | manifest (JSON, signed bytes) | signatures | zero padding | payloads...
//! ```
//!
//! The manifest carries a chunk table per payload, so a reader verifies every chunk against
//! the signed manifest before handing it out, with memory bounded by one chunk. The exact layout
//! is specified in `docs/bundle-format.md`; this crate does no device, ESP or Nix work.

pub mod channel;
#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod fat32;
pub mod fat_time;
pub mod grubenv;
pub mod header;
pub mod index;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod reader;
pub mod slot_index;
pub mod verity;
pub mod version;
pub mod writer;

pub use error::FormatError;
pub use header::{Header, HEADER_LEN, MAGIC};
pub use index::{ChunkIndex, IndexRef};
pub use keys::{KeyId, KeysError, PublicKey, SecretKey, Signer, TrustedKeys};
pub use manifest::{Digest, Manifest, Payload, PayloadKind};
pub use reader::{BundleReader, Chunk, ChunkInfo};
pub use version::Version;
pub use writer::{write_bundle, BundleInput, PayloadInput};

/// Format version written by default, and the newest this crate reads: 2 adds the
/// content-defined chunk index (`index`) for delta updates.
pub const FORMAT_VERSION: u32 = 2;
/// The first format, still read and (`abbuild --format 1`) written: releases before format 2
/// refuse format 2 bundles (exit 12), so the update that brings them a new abupdate must be
/// a format 1 bundle (`docs/bundle-format.md`, "Migration").
pub const FORMAT_V1: u32 = 1;

/// Payloads start at multiples of this, so a payload can be read with O_DIRECT or mapped.
pub const ALIGN: u64 = 4096;

/// Default chunk size. 256 KiB keeps per-chunk hashing overhead negligible, keeps the
/// manifest small (4096 chunks, ~280 KB of JSON for 1 GiB), and is fine-grained enough for
/// later chunk-level delta updates (two squashfs blocks of 128 KiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

/// Hard bounds on everything a reader takes from the file before it is verified.
pub mod limits {
    /// Largest manifest accepted: enough for ~120k chunks (30 GiB at 256 KiB chunks).
    pub const MAX_MANIFEST_LEN: u32 = 8 * 1024 * 1024;
    /// Largest chunk index (format 2): ~930k entries of 36 bytes, ~14 GiB of payloads at
    /// 16 KiB average chunks. Checked before the index is read.
    pub const MAX_INDEX_LEN: u64 = 32 * 1024 * 1024;
    /// Most signatures one bundle may carry (key rotation needs two or three).
    pub const MAX_SIGNATURES: u32 = 16;
    /// Smallest and largest chunk size; the largest bounds the reader's one buffer.
    pub const MIN_CHUNK_SIZE: u32 = 4096;
    pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
    /// Largest payload: 1 TiB, far beyond any slot, so arithmetic never overflows.
    pub const MAX_PAYLOAD_SIZE: u64 = 1 << 40;
    /// Longest strings in the manifest.
    pub const MAX_COMPATIBLE_LEN: usize = 256;
    pub const MAX_BUILD_ID_LEN: usize = 4096;
    pub const MAX_KERNEL_PARAMS_LEN: usize = 4096;
}

/// Rounds `n` up to the next multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}
