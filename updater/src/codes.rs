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
/// The bundle's kernel parameters cannot be passed on by this disk's boot loader: on a GRUB
/// disk they become GRUB script, so `"`, `$`, `\`, `;`, newlines and control characters.
pub const UNSAFE_KERNEL_PARAMS: i32 = 44;
/// A boot entry that is no slot's (not named `slot-a`/`slot-b`) would boot before the new
/// slot: abupdate does not demote entries it does not own.
pub const FOREIGN_ENTRY: i32 = 45;
/// The written slot (which read back as the signed chunks) is not the dm-verity tree its
/// signed root hash names: the bundle was built wrong. Found after writing, before the boot
/// entry.
pub const VERITY_MISMATCH: i32 = 46;

// `abupdate update` (docs/channels.md). Codes 50 to 53 are outcomes, not errors: nothing is
// printed on stderr, and `--json` says the same. 0 means up to date.
/// An update was installed (or an earlier one is installed): it runs after a reboot.
pub const UPDATE_INSTALLED: i32 = 50;
/// The channel's version is newer, but this machine is not in its rollout share yet.
pub const NOT_IN_ROLLOUT: i32 = 51;
/// The channel's version failed on this machine before (it fell back): skipped until a
/// newer version is published.
pub const VERSION_FAILED_BEFORE: i32 = 52;
/// `--dry-run`: the channel's version would be installed.
pub const UPDATE_AVAILABLE: i32 = 53;
/// The channel file is not valid JSON of the documented shape, or names a bundle outside
/// its tree.
pub const CHANNEL_MALFORMED: i32 = 54;
/// The channel file is larger than 64 KiB (refused before parsing).
pub const CHANNEL_TOO_LARGE: i32 = 55;
/// The channel file carries no signature.
pub const CHANNEL_UNSIGNED: i32 = 56;
/// The channel file is not signed by a trusted key.
pub const CHANNEL_UNTRUSTED: i32 = 57;
/// A trusted key's signature on the channel file does not verify: it was altered.
pub const CHANNEL_BAD_SIGNATURE: i32 = 58;
/// The channel file's sequence number is lower than one this device accepted (a replay).
pub const CHANNEL_REPLAYED: i32 = 59;
/// The channel file has expired.
pub const CHANNEL_EXPIRED: i32 = 60;
/// The channel is for another compatible string.
pub const CHANNEL_INCOMPATIBLE: i32 = 61;
/// The bundle the channel names is not the one it pins (manifest digest or size differs).
pub const CHANNEL_DIGEST_MISMATCH: i32 = 62;
/// No channel is configured and none was given.
pub const NO_CHANNEL: i32 = 63;
/// The channel's version is not the version in the manifest of the bundle it pins.
pub const CHANNEL_VERSION_MISMATCH: i32 = 64;
/// The channel file was issued further in the future than the allowed clock skew.
pub const CHANNEL_NOT_YET_VALID: i32 = 65;
/// `update-reboot` or `update-jitter` in the configuration is invalid (only `update` needs
/// them; other commands run).
pub const UPDATE_SETTINGS_INVALID: i32 = 66;

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
