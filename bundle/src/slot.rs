//! What a slot leaves on the ESP (`docs/layout.md`), written by `abbuild` into a new image
//! and by `abupdate` at every update, so it is defined once, here: `X/info.json` and the text
//! of the slot's boot entry.

use serde::{Deserialize, Serialize};

use crate::{Manifest, PayloadKind};

/// The `sort-key` of every entry abupdate manages: systemd-boot orders entries with the same
/// sort key by `version`, newest first.
pub const SORT_KEY: &str = "abupdate";

/// `X/info.json` on the ESP: what a slot holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SlotInfo {
    pub version: String,
    pub compatible: String,
    pub build_id: String,
    pub rootfs_size: u64,
    pub rootfs_sha256: String,
    /// Seconds since the epoch: the bundle's `created`.
    pub created: u64,
}

impl SlotInfo {
    /// The record for a slot that holds the bundle `m` describes.
    pub fn of(m: &Manifest) -> SlotInfo {
        let rootfs = m.payload(PayloadKind::Rootfs);
        SlotInfo {
            version: m.version.to_string(),
            compatible: m.compatible.clone(),
            build_id: m.build_id.clone(),
            rootfs_size: rootfs.size,
            rootfs_sha256: rootfs.sha256.to_string(),
            created: m.created,
        }
    }
}

/// Kernel parameters the device sets itself for each slot: a bundle that carried them could
/// make the kernel mount one slot while `ab.slot=` (what status, mark-good and the initrd go
/// by) names the other.
pub const RESERVED_KERNEL_PARAMS: [&str; 2] = ["ab.slot=", "root="];

/// Checks a bundle's kernel parameters: none may set what the device sets per slot
/// ([`RESERVED_KERNEL_PARAMS`]). Returns the offending parameter's message.
pub fn check_kernel_params(params: &str) -> Result<(), String> {
    for word in params.split_whitespace() {
        if let Some(r) = RESERVED_KERNEL_PARAMS
            .iter()
            .find(|r| word.starts_with(**r))
        {
            return Err(format!(
                "kernel parameter '{word}' is not allowed: abupdate sets {r} for each slot itself"
            ));
        }
    }
    Ok(())
}

/// The boot entry of `slot` (`a` or `b`) holding `version`, as a systemd-boot entry file;
/// `kernel_params` are the bundle's, appended to the options.
pub fn boot_entry(slot: &str, version: &str, kernel_params: &str) -> String {
    let mut options = format!("ab.slot={slot} root=PARTLABEL=root-{slot}");
    let params = kernel_params.trim();
    if !params.is_empty() {
        options.push(' ');
        options.push_str(params);
    }
    format!(
        "title abupdate slot {slot}, {version}\n\
         sort-key {SORT_KEY}\n\
         version {version}\n\
         linux /{slot}/vmlinuz\n\
         initrd /{slot}/initrd\n\
         options {options}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_text() {
        assert_eq!(
            boot_entry("b", "2026.11.22.1", " console=ttyS0 quiet "),
            "title abupdate slot b, 2026.11.22.1\nsort-key abupdate\nversion 2026.11.22.1\n\
             linux /b/vmlinuz\ninitrd /b/initrd\n\
             options ab.slot=b root=PARTLABEL=root-b console=ttyS0 quiet\n"
        );
        assert!(boot_entry("a", "1", "").ends_with("options ab.slot=a root=PARTLABEL=root-a\n"));
    }

    #[test]
    fn reserved_kernel_params() {
        assert!(check_kernel_params("console=ttyS0 quiet rootwait").is_ok());
        assert!(check_kernel_params("").is_ok());
        for bad in [
            "ab.slot=a",
            "quiet root=/dev/sda1",
            "root=PARTLABEL=root-b x",
        ] {
            let e = check_kernel_params(bad).unwrap_err();
            assert!(e.contains("is not allowed"), "{bad}: {e}");
        }
    }
}
