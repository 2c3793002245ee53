//! `abupdate`'s own exit codes (30 and up; the shared ones are in `abbundle::error::exit`),
//! and [`Refusal`], the error that carries one. Listed in `docs/exit-codes.md`.

use std::fmt;

/// The bundle's version is older than or equal to the installed one, and
/// `--allow-downgrade` was not given.
pub const DOWNGRADE_REFUSED: i32 = 30;
/// The bundle's root image is larger than the target slot partition.
pub const PAYLOAD_TOO_LARGE: i32 = 31;
/// Another abupdate command that changes the disk is running (the lock is held).
pub const LOCKED: i32 = 32;
/// The target slot is the one the system is running from.
pub const TARGET_RUNNING: i32 = 33;
/// A slot or partition the command needs does not exist.
pub const NO_SUCH_SLOT: i32 = 34;
/// The command would leave no good slot to boot (rollback, mark-bad).
pub const NO_FALLBACK: i32 = 35;
/// The disk has no valid GPT or its partitions are inconsistent.
pub const BAD_DISK: i32 = 36;
/// What was written does not read back as written (slot or ESP): the medium is failing.
pub const READBACK_MISMATCH: i32 = 37;
/// The running slot cannot be told (no `ab.slot=` on the kernel command line) for a command
/// that needs it (mark-good, boot-check).
pub const NOT_BOOTED_FROM_SLOT: i32 = 38;
/// The slot has no boot entry to act on (mark-good of a slot that has none).
pub const NO_ENTRY: i32 = 39;
/// No compatible string is configured, so no bundle can be checked against one.
pub const NOT_CONFIGURED: i32 = 40;
/// The bundle could not be fetched from its URL: network, HTTP or TLS (certificate) error.
pub const SOURCE_UNAVAILABLE: i32 = 41;
/// The trusted keys directory or a key file in it is unsafe: writable by group or others,
/// owned by someone other than root or this user, or not a regular file.
pub const KEYS_UNSAFE: i32 = 42;

/// The slot's kernel, initrd and boot entry do not fit on the ESP, even after its old files
/// (and clusters lost to an earlier interrupted write) are given back.
pub const ESP_FULL: i32 = 43;

/// A refusal or failure with a documented exit code and a one-line message.
#[derive(Debug)]
pub struct Refusal {
    pub code: i32,
    pub message: String,
}

impl Refusal {
    pub fn new(code: i32, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// Returns early with a [`Refusal`].
#[macro_export]
macro_rules! refuse {
    ($code:expr, $($fmt:tt)+) => {
        return Err($crate::codes::Refusal::new($code, format!($($fmt)+)).into())
    };
}
