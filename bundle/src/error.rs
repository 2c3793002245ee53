//! Errors a bundle can cause, each mapped to a documented process exit code
//! (`docs/exit-codes.md`) so scripts can tell "corrupt" from "untrusted" from "incompatible".

use std::io;

/// Everything that can be wrong with a bundle, or with reading one.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("reading bundle: {0}")]
    Io(#[from] io::Error),
    #[error("bundle is truncated: it ends inside the {0}")]
    Truncated(String),
    #[error("not an abupdate bundle (bad magic bytes)")]
    BadMagic,
    #[error(
        "unsupported bundle format version {found} (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("bundle header is corrupt (checksum mismatch)")]
    HeaderChecksum,
    #[error("bundle header is invalid: {0}")]
    BadHeader(String),
    /// `unit` names what `len` and `max` count ("bytes", "signatures").
    #[error("{what} is too large: {len} {unit}, the limit is {max}")]
    TooLarge {
        what: String,
        len: u64,
        max: u64,
        unit: &'static str,
    },
    #[error("bundle carries no signature")]
    NoSignature,
    #[error("bundle is not signed by a trusted key (signed by: {key_ids}); trusted: {trusted}")]
    UntrustedKey { key_ids: String, trusted: String },
    #[error("bad signature by trusted key {0}: the manifest or signature was altered")]
    BadSignature(String),
    #[error("manifest is invalid: {0}")]
    BadManifest(String),
    #[error("bundle is for '{found}', this system is '{expected}'")]
    Incompatible { expected: String, found: String },
    #[error("payload {payload} is corrupt: chunk {index} does not match the signed manifest")]
    ChunkHashMismatch { payload: String, index: u64 },
    #[error("chunk index is invalid: {0}")]
    BadIndex(String),
    #[error("chunk index does not match the signed manifest: the bundle is corrupt or altered")]
    IndexMismatch,
    #[error("padding before offset {0} is not zero: the bundle is corrupt")]
    BadPadding(u64),
    #[error("bundle has data after its last payload (at offset {0})")]
    TrailingData(u64),
}

/// Process exit codes, shared by `abbuild` and `abupdate` (see `docs/exit-codes.md`).
pub mod exit {
    pub const OK: i32 = 0;
    /// Any other failure: I/O on the system, bad arguments to a command, missing tools.
    pub const FAILURE: i32 = 1;
    /// Command-line usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// Structurally invalid bundle: magic, header, manifest, padding, trailing data.
    pub const MALFORMED: i32 = 10;
    pub const TRUNCATED: i32 = 11;
    pub const UNSUPPORTED_VERSION: i32 = 12;
    pub const TOO_LARGE: i32 = 13;
    pub const NO_SIGNATURE: i32 = 14;
    pub const UNTRUSTED_KEY: i32 = 15;
    pub const BAD_SIGNATURE: i32 = 16;
    pub const INCOMPATIBLE: i32 = 17;
    pub const CORRUPT_PAYLOAD: i32 = 18;
    /// The chunk index (format 2) does not match its signed digest, or its entries do not
    /// describe the payloads.
    pub const BAD_INDEX: i32 = 19;
}

impl FormatError {
    /// The exit code a command should end with when this error stops it.
    pub fn exit_code(&self) -> i32 {
        use FormatError::*;
        match self {
            Io(_) => exit::FAILURE,
            Truncated(_) => exit::TRUNCATED,
            BadMagic | HeaderChecksum | BadHeader(_) | BadManifest(_) | BadPadding(_)
            | TrailingData(_) => exit::MALFORMED,
            UnsupportedVersion { .. } => exit::UNSUPPORTED_VERSION,
            TooLarge { .. } => exit::TOO_LARGE,
            NoSignature => exit::NO_SIGNATURE,
            UntrustedKey { .. } => exit::UNTRUSTED_KEY,
            BadSignature(_) => exit::BAD_SIGNATURE,
            Incompatible { .. } => exit::INCOMPATIBLE,
            ChunkHashMismatch { .. } => exit::CORRUPT_PAYLOAD,
            BadIndex(_) | IndexMismatch => exit::BAD_INDEX,
        }
    }
}
