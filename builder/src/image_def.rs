//! Image definitions: `images/NAME.toml`, the partition sizes, compression and boot settings
//! of one kind of device. See `docs/images.md` for every field.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

/// Partitions start and (except the last) end on multiples of this: 1 MiB, what every
/// partitioning tool uses, which suits any flash erase block and 4K-sector disk.
pub const ALIGN: u64 = 1024 * 1024;

/// Where Debian's systemd-boot-efi puts the bootloader; the default for `bootloader` when
/// [`BOOTLOADER_ENV`] is not set.
pub const DEFAULT_BOOTLOADER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Environment variable naming the default systemd-boot EFI binary: the Nix-built abbuild's
/// wrapper sets it to nixpkgs' systemd-boot, so it needs none from the host. An image
/// definition's own `bootloader` wins over it.
pub const BOOTLOADER_ENV: &str = "ABBUILD_SYSTEMD_BOOT_EFI";

/// Smallest ESP: FAT32 needs 65525 clusters, which at 512-byte clusters is ~33 MiB.
pub const MIN_ESP_SIZE: u64 = 34 * ALIGN;

/// A size in bytes, written in TOML as an integer or a string with a unit:
/// `"64MiB"`, `"2GiB"`, `"10GB"` (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size '{s}': expected e.g. 64MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            u => {
                return Err(format!(
                    "invalid size unit '{u}' in '{s}': use KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size '{s}' is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes ({:.1} MiB)",
            self.0,
            self.0 as f64 / (1u64 << 20) as f64
        )
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Compressor of the root squashfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Fast to decompress, good ratio: the default.
    #[default]
    Zstd,
    /// ~5-10% smaller, slower to build and to read.
    Xz,
}

impl Compression {
    /// The name `mksquashfs -comp` takes.
    pub fn mksquashfs_name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }
}

/// How the device boots and flips slots: decides the ESP's loader files (`build.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootBackend {
    /// systemd-boot with Boot Loader Specification entries and boot counting (UEFI).
    #[default]
    SystemdBoot,
    /// GRUB for legacy BIOS and UEFI on one disk, with its A/B state in GRUB env blocks
    /// (`grub.rs`, `bios.rs`).
    Grub,
}

impl BootBackend {
    /// Every backend, in the order the error for an unknown one lists them.
    pub const ALL: [BootBackend; 2] = [BootBackend::SystemdBoot, BootBackend::Grub];

    /// The name in an image definition's `boot-backend`.
    pub fn name(self) -> &'static str {
        match self {
            BootBackend::SystemdBoot => "systemd-boot",
            BootBackend::Grub => "grub",
        }
    }
}

impl<'de> Deserialize<'de> for BootBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BootBackend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let known: Vec<String> = BootBackend::ALL
                    .iter()
                    .map(|b| format!("\"{}\"", b.name()))
                    .collect();
                serde::de::Error::custom(format!(
                    "boot-backend \"{s}\" is not supported; supported: {}",
                    known.join(", ")
                ))
            })
    }
}

fn default_block_size() -> Size {
    Size(128 * 1024)
}

fn default_boot_tries() -> u32 {
    3
}

fn default_true() -> bool {
    true
}

fn default_bootloader() -> PathBuf {
    match std::env::var_os(BOOTLOADER_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_BOOTLOADER),
    }
}

/// One image definition, as read from `images/NAME.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageDef {
    /// Image name: output file names, and the seed of the disk's and partitions' GUIDs.
    pub name: String,
    /// Compatible string of bundles for this image; devices refuse bundles with another one.
    pub compatible: String,
    /// Size of the whole disk image.
    pub disk_size: Size,
    /// Size of the EFI system partition (FAT32).
    pub esp_size: Size,
    /// Size of each root slot (`root-a`, `root-b`); the root squashfs must fit.
    pub slot_size: Size,
    /// Root squashfs compressor.
    #[serde(default)]
    pub compression: Compression,
    /// Root squashfs block size (4 KiB to 1 MiB, a power of two).
    #[serde(default = "default_block_size")]
    pub block_size: Size,
    /// Boot backend.
    #[serde(default)]
    pub boot_backend: BootBackend,
    /// Boot tries a newly installed slot gets before the other one boots again.
    #[serde(default = "default_boot_tries")]
    pub boot_tries: u32,
    /// Kernel parameters added after the system's own `kernel-params`.
    #[serde(default)]
    pub kernel_params: Vec<String>,
    /// The bootloader EFI binary installed as `EFI/BOOT/BOOTX64.EFI`.
    #[serde(default = "default_bootloader")]
    pub bootloader: PathBuf,
    /// A dm-verity hash tree after the root image, its root hash in the signed manifest
    /// (`abinit.verity=`, docs/layout.md); `false`: the slot boots without verity.
    #[serde(default = "default_true")]
    pub verity: bool,
}

impl ImageDef {
    /// Reads and validates an image definition.
    pub fn load(path: &Path) -> Result<ImageDef> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading image definition {}", path.display()))?;
        let def: ImageDef = toml::from_str(&text)
            .with_context(|| format!("parsing image definition {}", path.display()))?;
        def.validate()
            .with_context(|| format!("checking image definition {}", path.display()))?;
        Ok(def)
    }

    /// Checks the rules `docs/images.md` states.
    pub fn validate(&self) -> Result<()> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !name_ok(&self.name) || self.name.starts_with('.') {
            bail!(
                "name '{}' must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'",
                self.name
            );
        }
        if self.compatible.is_empty()
            || self.compatible.len() > abbundle::limits::MAX_COMPATIBLE_LEN
            || self
                .compatible
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "compatible '{}' must be non-empty, without spaces",
                self.compatible
            );
        }
        for (field, s) in [
            ("disk-size", self.disk_size),
            ("esp-size", self.esp_size),
            ("slot-size", self.slot_size),
        ] {
            if s.0 == 0 || s.0 % ALIGN != 0 {
                bail!("{field} is {s}: it must be a non-zero multiple of 1 MiB");
            }
        }
        if self.esp_size.0 < MIN_ESP_SIZE {
            bail!(
                "esp-size is {}: FAT32 needs at least {}",
                self.esp_size,
                Size(MIN_ESP_SIZE)
            );
        }
        let b = self.block_size.0;
        if !b.is_power_of_two() || !(4096..=1 << 20).contains(&b) {
            bail!(
                "block-size is {}: it must be a power of two from 4KiB to 1MiB",
                self.block_size
            );
        }
        if !(1..=100).contains(&self.boot_tries) {
            bail!("boot-tries is {}: it must be 1 to 100", self.boot_tries);
        }
        for p in &self.kernel_params {
            if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("kernel-params entry '{p}' must be one parameter without spaces");
            }
            if p.starts_with(abbundle::verity::PARAM) {
                bail!(
                    "kernel-params entry '{p}': {} is abbuild's, made from the image (set verity = false to boot without it)",
                    abbundle::verity::PARAM
                );
            }
        }
        crate::disk::Layout::compute(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(Size::parse("10GB").unwrap().0, 10_000_000_000);
        assert_eq!(Size::parse("4096").unwrap().0, 4096);
        assert!(Size::parse("12 apples").is_err());
        assert!(Size::parse("99999999999TiB").is_err());
    }

    #[test]
    fn shipped_definitions_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let def = ImageDef::load(&path).unwrap();
                // The file is named after the image.
                assert_eq!(Some(def.name.as_str()), path.file_stem().unwrap().to_str());
                names.push((def.name, def.boot_backend));
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            [
                ("qemu-test".to_string(), BootBackend::SystemdBoot),
                ("qemu-test-grub".to_string(), BootBackend::Grub),
                // The VPS image boots under BIOS and UEFI; vps-uefi is for UEFI-only machines.
                ("vps".to_string(), BootBackend::Grub),
                ("vps-uefi".to_string(), BootBackend::SystemdBoot),
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<ImageDef>(
            "name='x'\ncompatible='x'\ndisk-size='1GiB'\nesp-size='64MiB'\nslot-size='100MiB'\nslot-sise=1",
        )
        .unwrap_err();
        assert!(e.to_string().contains("slot-sise"), "{e}");
    }

    #[test]
    fn unknown_boot_backend_is_refused() {
        let def = |backend: &str| {
            toml::from_str::<ImageDef>(&format!(
                "name='x'\ncompatible='x'\ndisk-size='1GiB'\nesp-size='64MiB'\nslot-size='100MiB'\nboot-backend='{backend}'"
            ))
        };
        let e = def("lilo").unwrap_err().to_string();
        assert!(
            e.contains(
                "boot-backend \"lilo\" is not supported; supported: \"systemd-boot\", \"grub\""
            ),
            "{e}"
        );
        assert_eq!(def("grub").unwrap().boot_backend, BootBackend::Grub);
        assert_eq!(
            def("systemd-boot").unwrap().boot_backend,
            BootBackend::SystemdBoot
        );
    }
}
