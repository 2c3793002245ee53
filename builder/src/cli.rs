//! Command-line types for `abbuild`; the work happens in the modules these dispatch to.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build signed A/B update bundles (.abu) and bootable disk images.
///
/// A bundle carries a root filesystem image, a kernel and an initrd, with a signed
/// manifest that lets a device verify every chunk before writing it.
#[derive(Parser, Debug)]
#[command(name = "abbuild", version, help_expected = true, max_term_width = 80)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: abbundle::cli::Verbosity,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an ed25519 signing key pair: DIR/NAME.key (secret) and DIR/NAME.pub
    ///
    /// Keep NAME.key in your CI's secret store; copy NAME.pub to devices' key
    /// directory (/etc/abupdate/keys by default).
    Keygen(KeygenArgs),
    /// Write a signed bundle from a root image, kernel and initrd you already have
    ///
    /// Example:
    ///   abbuild bundle --rootfs root.squashfs --kernel bzImage --initrd initrd \
    ///     --compatible vps-x86_64 --version 2026.11.22.1 --key ci.key --out v1.abu
    #[command(verbatim_doc_comment)]
    Bundle(BundleArgs),
    /// Build a signed bundle and a bootable disk image from a system
    ///
    /// Writes OUT_DIR/NAME-VERSION.abu and OUT_DIR/NAME-VERSION.img. Example:
    ///   abbuild build --image images/vps.toml --system ./result \
    ///     --version 2026.11.22.1 --key ci.key --out-dir out
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// Pack a system's root filesystem into a squashfs image, nothing else
    ///
    /// The first step of `build`, with the same determinism rules: for
    /// inspecting a root or benchmarking (scripts/bench-squashfs.sh).
    Rootfs(RootfsArgs),
    /// Show a bundle's manifest and the key ids of its signatures (not verified)
    Inspect(InspectArgs),
    /// Publish a bundle: copy it into a static tree, write the signed channel file
    ///
    /// Writes OUT_DIR/IMAGE/BUNDLE.abu and OUT_DIR/IMAGE/CHANNEL.json, with a
    /// sequence number one above the previous file's (docs/channels.md). Example:
    ///   abbuild publish --bundle out/vps-2026.11.22.2.abu --channel stable \
    ///     --key ci.key --out-dir www --rollout 10
    #[command(verbatim_doc_comment)]
    Publish(PublishArgs),
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The bundle to publish
    #[arg(long)]
    pub bundle: PathBuf,
    /// Channel name (stable, beta, ...)
    #[arg(long)]
    pub channel: String,
    /// Secret key file(s) to sign the channel file with (repeat for rotation)
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    /// Root of the static tree served to devices (created if missing)
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Directory in the tree (default: the bundle's compatible string)
    #[arg(long)]
    pub image: Option<String>,
    /// Percentage of devices that install it now (0 to 100)
    #[arg(long, default_value_t = 100)]
    pub rollout: u8,
    /// How long devices accept the channel file: 3600, 30m, 12h, 14d
    #[arg(long, default_value = "14d")]
    pub valid_for: String,
    /// Sequence number to write (default: the previous file's plus one)
    #[arg(long)]
    pub sequence: Option<u64>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Directory to write the key pair into (created if missing)
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Key name: the file stem, recorded in the public key
    #[arg(long, default_value = "abupdate")]
    pub name: String,
    /// Overwrite existing key files
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Root filesystem image (squashfs) to install into a slot
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Kernel image
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initrd image
    #[arg(long)]
    pub initrd: PathBuf,
    /// Kernel parameters of the system (the updater adds ab.slot= and root=)
    #[arg(long, default_value = "")]
    pub kernel_params: String,
    /// Devices accept only bundles whose compatible string equals theirs
    #[arg(long)]
    pub compatible: String,
    /// Version: dotted numbers such as 42 or 2026.11.22.1, compared numerically
    #[arg(long)]
    pub version: String,
    /// Build id recorded in the manifest (e.g. the Nix toplevel store path)
    #[arg(long, default_value = "")]
    pub build_id: String,
    /// Secret key file(s) to sign with (repeat for key rotation)
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    /// Chunk size in bytes (power of two, 4 KiB to 4 MiB)
    #[arg(long, default_value_t = abbundle::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Bundle format: 2 (with the chunk index for delta updates) or 1 (for devices
    /// whose abupdate predates format 2; see docs/bundle-format.md, Migration)
    #[arg(long, default_value_t = abbundle::FORMAT_VERSION,
          value_parser = clap::value_parser!(u32).range(1..=2))]
    pub bundle_format: u32,
    /// Output bundle file (.abu)
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Bundle file
    pub bundle: PathBuf,
    /// Print JSON (the manifest plus signature key ids) instead of text
    #[arg(long)]
    pub json: bool,
    /// Also list every chunk hash (text output)
    #[arg(long)]
    pub chunks: bool,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Image definition (images/NAME.toml)
    #[arg(long)]
    pub image: PathBuf,
    /// The system: a Nix toplevel store path (or ./result) or a directory
    #[arg(long)]
    pub system: PathBuf,
    /// Version: dotted numbers such as 42 or 2026.11.22.1, compared numerically
    #[arg(long)]
    pub version: String,
    /// Secret key file(s) to sign with (repeat for key rotation)
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    /// Directory for the bundle and the disk image (created if missing)
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Disk image format (qcow2 needs qemu-img)
    #[arg(long, value_enum, default_value_t = crate::build::DiskFormat::Raw)]
    pub format: crate::build::DiskFormat,
    /// Build id for the manifest (default: the store path, or empty for a directory)
    #[arg(long)]
    pub build_id: Option<String>,
    /// Chunk size in bytes (power of two, 4 KiB to 4 MiB)
    #[arg(long, default_value_t = abbundle::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Bundle format: 2 (with the chunk index for delta updates) or 1 (for devices
    /// whose abupdate predates format 2; see docs/bundle-format.md, Migration)
    #[arg(long, default_value_t = abbundle::FORMAT_VERSION,
          value_parser = clap::value_parser!(u32).range(1..=2))]
    pub bundle_format: u32,
    /// Threads for mksquashfs (default: all cores)
    #[arg(long)]
    pub processors: Option<u32>,
}

#[derive(Args, Debug)]
pub struct RootfsArgs {
    /// Image definition (images/NAME.toml): compression and block size
    #[arg(long)]
    pub image: PathBuf,
    /// The system: a Nix toplevel store path (or ./result) or a directory
    #[arg(long)]
    pub system: PathBuf,
    /// Output squashfs file
    #[arg(long)]
    pub out: PathBuf,
    /// Threads for mksquashfs (default: all cores)
    #[arg(long)]
    pub processors: Option<u32>,
}
