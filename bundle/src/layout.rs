//! The on-disk contract that `abbuild` (which makes the first image) and `abupdate` (which
//! changes it) share, defined once (`docs/layout.md`): partition labels and their order, slot
//! names, the files a slot keeps on the ESP, `X/info.json`, and the boot loader's files and
//! entry text. Nothing else in either program spells these names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Manifest, PayloadKind};

/// GPT partition name (`PARTLABEL`) of the EFI system partition.
pub const ESP_LABEL: &str = "esp";
/// GPT partition name of the persistent data partition (always the last one, so it can grow).
pub const DATA_LABEL: &str = "data";
/// Every partition of an image in table order: partition N is `PARTITIONS[N - 1]`.
pub const PARTITIONS: [&str; 4] = [ESP_LABEL, "root-a", "root-b", DATA_LABEL];

/// One of the two root slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// `a` or `b`: the name in entry names, ESP directories and `ab.slot=`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's GPT partition label.
    pub fn partition_label(self) -> &'static str {
        match self {
            Slot::A => PARTITIONS[1],
            Slot::B => PARTITIONS[2],
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// The files this slot keeps on the ESP.
    pub fn files(self) -> SlotFiles {
        let d = self.name();
        SlotFiles {
            dir: d.to_string(),
            kernel: format!("{d}/vmlinuz"),
            initrd: format!("{d}/initrd"),
            info: format!("{d}/info.json"),
            corrupt: format!("{d}/corrupt.json"),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Slot, String> {
        Slot::parse(s).ok_or_else(|| format!("no such slot '{s}' (use a or b)"))
    }
}

/// Paths (relative to the ESP's root) of the files a slot keeps on the ESP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFiles {
    pub dir: String,
    pub kernel: String,
    pub initrd: String,
    /// `X/info.json`: [`SlotInfo`].
    pub info: String,
    /// `X/corrupt.json`: written by `abupdate mark-corrupt` when the initrd's dm-verity check
    /// found the slot damaged; removed when an apply starts writing the slot again.
    pub corrupt: String,
}

impl SlotFiles {
    /// Kernel, initrd and info.json.
    pub fn all(&self) -> [&str; 3] {
        [&self.kernel, &self.initrd, &self.info]
    }
}

/// The firmware's fallback boot path on the ESP, where the boot loader goes.
pub const BOOT_EFI: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's configuration and entries (Boot Loader Specification type #1).
pub const LOADER_CONF: &str = "loader/loader.conf";
pub const ENTRIES_DIR: &str = "loader/entries";
/// Every entry abupdate manages is named `slot-X[+LEFT[-DONE]].conf`.
pub const ENTRY_PREFIX: &str = "slot-";

/// Every directory of a systemd-boot ESP, parents first: [`BOOT_EFI`]'s, systemd-boot's
/// (`loader/entries`) and each slot's. The builder creates exactly these.
pub fn systemd_boot_esp_dirs() -> Vec<String> {
    esp_dirs_with(&[ENTRIES_DIR])
}

/// Every directory of a GRUB ESP, parents first: [`BOOT_EFI`]'s, GRUB's
/// ([`crate::grubenv::GRUB_DIR`]: grub.cfg and the env blocks) and each slot's (its files and
/// `X/cmdline.cfg`). The builder creates exactly these.
pub fn grub_esp_dirs() -> Vec<String> {
    esp_dirs_with(&[crate::grubenv::GRUB_DIR])
}

/// The parents of [`BOOT_EFI`], the loader's directories `loader_dirs` with their parents, then
/// each slot's directory: each once, parents first.
fn esp_dirs_with(loader_dirs: &[&str]) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    let mut add = |path: &str| {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !dirs.contains(&prefix) {
                dirs.push(prefix.clone());
            }
        }
    };
    add(BOOT_EFI
        .rsplit_once('/')
        .expect("BOOT_EFI is in a directory")
        .0);
    for d in loader_dirs {
        add(d);
    }
    for s in Slot::ALL {
        add(&s.files().dir);
    }
    dirs
}

/// The name of `slot`'s entry when it is good (no boot counter).
pub fn good_entry_name(slot: Slot) -> String {
    format!("{ENTRY_PREFIX}{slot}.conf")
}

/// The path of an entry file on the ESP.
pub fn entry_path(file: &str) -> String {
    format!("{ENTRIES_DIR}/{file}")
}

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
    /// The signed dm-verity root hash (`abinit.verity=`), for images with a tree. Readers
    /// before it ignore the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_root_hash: Option<String>,
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
            verity_root_hash: m.verity().map(|v| hex::encode(v.root_hash)),
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

/// The kernel parameter GRUB's grub.cfg adds: `ab.esp=<GUID>`, the partition GUID of the
/// ESP it was loaded from (empty if GRUB cannot tell), so that the initrd picks that disk
/// when several carry the image (docs/layout.md, "Per-machine identity").
pub const ESP_PARAM: &str = "ab.esp";

/// The longest kernel command line the x86 kernel keeps: `COMMAND_LINE_SIZE` is 2048 bytes
/// with the terminating NUL. The kernel cuts a longer one off silently, and what goes is the
/// tail: the bundle's own parameters (`panic=`, `console=`).
pub const MAX_KERNEL_CMDLINE: usize = 2047;

/// The kernel command line a slot boots with, for `kernel_params`, as long as either loader
/// makes it (a bundle installs onto either kind of disk): GRUB's `linux` command puts
/// `BOOT_IMAGE=/X/vmlinuz ` first; systemd-boot may put `initrd=\X\initrd ` first for the
/// entry's `initrd` line (shorter; counted all the same); both then pass
/// `ab.slot=X root=PARTLABEL=root-X`, GRUB then ` ab.esp=<the ESP's partition GUID>`
/// ([`ESP_PARAM`]), and the parameters.
pub fn longest_kernel_cmdline(kernel_params: &str) -> usize {
    let params = kernel_params
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Slot::ALL
        .iter()
        .map(|s| {
            let f = s.files();
            let grub = format!("BOOT_IMAGE=/{} ", f.kernel).len() + ESP_PARAM.len() + 38;
            let sd = format!("initrd=\\{} ", f.initrd.replace('/', "\\")).len();
            let own = format!("ab.slot={s} root=PARTLABEL={}", s.partition_label()).len();
            grub.max(sd)
                + own
                + if params.is_empty() {
                    0
                } else {
                    1 + params.len()
                }
        })
        .max()
        .unwrap_or(0)
}

/// Checks that `kernel_params` leave the kernel's command line whole
/// ([`longest_kernel_cmdline`] at most [`MAX_KERNEL_CMDLINE`]).
pub fn check_kernel_cmdline_len(kernel_params: &str) -> Result<(), String> {
    let len = longest_kernel_cmdline(kernel_params);
    if len > MAX_KERNEL_CMDLINE {
        return Err(format!(
            "the kernel command line would be {len} bytes ({} of kernel parameters, the rest \
             added by abupdate and the boot loader), and the kernel keeps only \
             {MAX_KERNEL_CMDLINE}: the parameters at its end would be lost; shorten the kernel \
             parameters by {} bytes",
            kernel_params
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .len(),
            len - MAX_KERNEL_CMDLINE
        ));
    }
    Ok(())
}

/// Characters refused in kernel parameters on a GRUB disk: there they become GRUB script, a
/// double-quoted word in `X/cmdline.cfg` (`abbundle::grubenv::cmdline_file`), and each of these
/// could end the quoting or expand a variable.
pub const GRUB_FORBIDDEN_CHARS: [char; 5] = ['"', '$', '\\', ';', '\n'];

/// Checks kernel parameters for a GRUB disk: [`check_kernel_params`], and none of
/// [`GRUB_FORBIDDEN_CHARS`] nor any other control character.
pub fn check_grub_kernel_params(params: &str) -> Result<(), String> {
    check_kernel_params(params)?;
    if let Some(c) = params
        .chars()
        .find(|c| GRUB_FORBIDDEN_CHARS.contains(c) || c.is_control())
    {
        return Err(format!(
            "kernel parameters contain {c:?}, which GRUB would read as script: \
             '\"', '$', '\\', ';', newlines and control characters are not allowed"
        ));
    }
    Ok(())
}

/// The boot entry of `slot` holding `version`, as a systemd-boot entry file; `kernel_params`
/// are the bundle's, appended to the options.
pub fn boot_entry(slot: Slot, version: &str, kernel_params: &str) -> String {
    let files = slot.files();
    let mut options = format!("ab.slot={slot} root=PARTLABEL={}", slot.partition_label());
    let params = kernel_params.trim();
    if !params.is_empty() {
        options.push(' ');
        options.push_str(params);
    }
    format!(
        "title abupdate slot {slot}, {version}\n\
         sort-key {SORT_KEY}\n\
         version {version}\n\
         linux /{}\n\
         initrd /{}\n\
         options {options}\n",
        files.kernel, files.initrd
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cmdline_length() {
        // GRUB's `BOOT_IMAGE=/a/vmlinuz ` (22) and ` ab.esp=<36>` (44) are longer than
        // systemd-boot's `initrd=\a\initrd ` (17); then `ab.slot=a root=PARTLABEL=root-a`
        // (31) and a space.
        assert_eq!(longest_kernel_cmdline(""), 53 + 44);
        assert_eq!(longest_kernel_cmdline("  quiet   panic=5 "), 54 + 44 + 13);
        let room = MAX_KERNEL_CMDLINE - 54 - 44;
        assert!(check_kernel_cmdline_len(&"x".repeat(room)).is_ok());
        let e = check_kernel_cmdline_len(&"x".repeat(room + 1)).unwrap_err();
        assert!(e.contains("2048 bytes") && e.contains("by 1 bytes"), "{e}");
    }

    #[test]
    fn entry_text() {
        assert_eq!(
            boot_entry(Slot::B, "2026.11.22.1", " console=ttyS0 quiet "),
            "title abupdate slot b, 2026.11.22.1\nsort-key abupdate\nversion 2026.11.22.1\n\
             linux /b/vmlinuz\ninitrd /b/initrd\n\
             options ab.slot=b root=PARTLABEL=root-b console=ttyS0 quiet\n"
        );
        assert!(boot_entry(Slot::A, "1", "").ends_with("options ab.slot=a root=PARTLABEL=root-a\n"));
    }

    /// Each loader's list holds the directory of every file the builder or abupdate puts on
    /// that loader's ESP, every directory after its parent.
    #[test]
    fn esp_dirs_hold_every_files_directory() {
        let dir_of = |p: &str| p.rsplit_once('/').map(|(d, _)| d.to_string());
        let slot_files: Vec<String> = Slot::ALL
            .iter()
            .flat_map(|s| s.files().all().map(String::from))
            .collect();
        let mut sd_files = vec![BOOT_EFI.to_string(), LOADER_CONF.to_string()];
        sd_files.extend(Slot::ALL.map(|s| entry_path(&good_entry_name(s))));
        let mut grub_files = vec![BOOT_EFI.to_string(), crate::grubenv::GRUB_CFG.to_string()];
        grub_files.extend(crate::grubenv::ENV_FILES.map(String::from));
        grub_files.extend(Slot::ALL.map(crate::grubenv::cmdline_file));
        for (dirs, mut files) in [
            (systemd_boot_esp_dirs(), sd_files),
            (grub_esp_dirs(), grub_files),
        ] {
            files.extend(slot_files.iter().cloned());
            for f in &files {
                let d = dir_of(f).unwrap();
                assert!(dirs.contains(&d), "{d} (of {f}) missing from {dirs:?}");
            }
            for (i, d) in dirs.iter().enumerate() {
                if let Some(parent) = dir_of(d) {
                    assert!(dirs[..i].contains(&parent), "{d} before {parent}: {dirs:?}");
                }
            }
        }
        assert_eq!(
            systemd_boot_esp_dirs(),
            ["EFI", "EFI/BOOT", "loader", "loader/entries", "a", "b"]
        );
        assert_eq!(grub_esp_dirs(), ["EFI", "EFI/BOOT", "grub", "a", "b"]);
        // A loader's directories are not the other's.
        assert!(!grub_esp_dirs().iter().any(|d| d.starts_with("loader")));
    }

    #[test]
    fn grub_kernel_params() {
        assert!(check_grub_kernel_params("console=ttyS0,115200n8 quiet x='y z' {a}").is_ok());
        for bad in [
            "a=\"b",
            "a=$root",
            "a=\\x",
            "a; reboot",
            "a\nreboot",
            "a\tb",
            "root=x",
        ] {
            assert!(check_grub_kernel_params(bad).is_err(), "{bad:?}");
            // The systemd-boot check lets all but the reserved one through.
            assert_eq!(check_kernel_params(bad).is_err(), bad.starts_with("root"));
        }
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
