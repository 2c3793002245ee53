//! Command-line types for `abupdate`; the work happens in the modules these dispatch to.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Install signed A/B update bundles (.abu) safely.
///
/// A bundle is verified chunk by chunk against its signed manifest before any
/// byte of it is used. Exit codes are listed in docs/exit-codes.md.
#[derive(Parser, Debug)]
#[command(name = "abupdate", version, help_expected = true, max_term_width = 80)]
pub struct Cli {
    /// Disk to work on: a block device or a disk image file (default: the
    /// disk holding the booted root)
    #[arg(long, global = true)]
    pub disk: Option<PathBuf>,
    /// Configuration file
    #[arg(long, global = true, default_value = crate::state::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Directory of trusted public keys (*.pub); default from the config
    #[arg(long, global = true)]
    pub keys: Option<PathBuf>,
    #[command(flatten)]
    pub verbosity: abbundle::cli::Verbosity,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a bundle completely without installing it
    ///
    /// Checks the format, that a trusted key signed it, the compatible string
    /// (if given or configured) and every chunk of every payload.
    ///
    /// Example: abupdate verify --keys /etc/abupdate/keys update.abu
    Verify(VerifyArgs),
    /// Install a bundle into the inactive slot and make it boot next
    ///
    /// SOURCE is a bundle file, a block device holding one, or an http(s):// URL
    /// (streamed, no temporary file). Everything is checked before anything is
    /// written; the new slot gets a boot entry with a few tries, and falls back
    /// to the current one if it does not get marked good. A format 2 bundle from
    /// a file, block device or URL is applied as a delta: only the chunks the
    /// device does not hold already (in either slot or their boot files) are
    /// read. --full skips the seed scan and reads the whole bundle instead.
    ///
    /// Example: abupdate apply /media/usb/update.abu
    Apply(ApplyArgs),
    /// Show both slots, what runs and what boots next
    ///
    /// The disk's boot loader; each slot's state (good, trying with N tries
    /// left, bad, empty), version and build id; the running slot, the slot that
    /// boots next, and whether the last boot was a fallback.
    Status(StatusArgs),
    /// Mark the running slot good: keep booting it (run after a health check)
    MarkGood,
    /// Mark a slot bad (default: the running one) so the other slot boots
    ///
    /// Refused (exit 35) if the other slot cannot boot, and if the slot is the
    /// only good one while the other is only being tried: mark that one good
    /// first, once it is up.
    MarkBad(MarkBadArgs),
    /// Make the other slot boot next, if it is good
    ///
    /// The slot that would boot next is marked bad. Refused if the other slot is
    /// not good: the machine is never left without a good entry.
    Rollback,
    /// Record what booted and whether it was a fallback (run early at boot)
    ///
    /// Writes the state file (which slot booted, and whether that was a
    /// fallback), and grows the data partition to fill a disk larger than the
    /// image (config grow-data).
    BootCheck,
    /// Record that a slot's image is damaged; mark it bad if the other can boot
    ///
    /// Run by the initrd when the slot's dm-verity check fails. Writes
    /// X/corrupt.json on the ESP (shown by status) and marks the slot bad, so
    /// the other slot boots. Refused (exit 35, the record still written, the
    /// boot loader unchanged) if the other slot cannot boot or was found
    /// damaged too.
    MarkCorrupt(MarkCorruptArgs),
    /// Check the channel and install its version if it is newer (unattended)
    ///
    /// Fetches the signed channel file (the config's channel, or --channel),
    /// refuses an older sequence, an expired or foreign file, skips versions
    /// that failed here and machines outside the rollout share, installs the
    /// bundle like apply, and reboots as update-reboot says. Exit codes: 0 up
    /// to date, 50 installed (reboot pending), 51 not in rollout yet, 52 the
    /// version failed here before, 53 available (--dry-run); see
    /// docs/channels.md.
    ///
    /// Example: abupdate update --channel https://updates.example/vps/stable.json
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Channel file: http(s):// URL, file:// URL or path (default: the config's)
    #[arg(long)]
    pub channel: Option<String>,
    /// Print the outcome as JSON (apiVersion abupdate/v1, kind UpdateResult)
    #[arg(long)]
    pub json: bool,
    /// Check and report, install nothing, record nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the random delay (update-jitter) before the check
    #[arg(long)]
    pub now: bool,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Bundle file, block device or http(s):// URL
    pub source: String,
    /// Install even if the bundle is not newer than the installed version
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Reboot once the update is installed
    #[arg(long)]
    pub reboot: bool,
    /// Target slot (default: the one not running or booting next)
    #[arg(long)]
    pub slot: Option<crate::boot::Slot>,
    /// Change nothing: print what would be read from the bundle and what copied
    /// from the slots and boot files the device holds (format 2 bundles)
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON (apiVersion abupdate/v1, kind
    /// ApplyPlan)
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Read the whole bundle as one stream: no seed scan, no delta (format 2
    /// bundles). Faster when the source is as fast as the disk (a local SSD or
    /// NVMe file), where a delta's seed scan costs more than it saves; a delta
    /// pays off over a network or from a slow medium
    #[arg(long)]
    pub full: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (apiVersion abupdate/v1, kind Status)
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MarkCorruptArgs {
    /// The damaged slot: a or b
    pub slot: crate::boot::Slot,
    /// What the check found, for the record (e.g. "data block 12 is corrupted")
    #[arg(long, default_value = "the dm-verity check failed")]
    pub detail: String,
}

#[derive(Args, Debug)]
pub struct MarkBadArgs {
    /// Slot to mark bad: a or b (default: the running slot)
    pub slot: Option<crate::boot::Slot>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Bundle: a file, a block device holding one, or an http(s):// URL
    pub bundle: String,
    /// Required compatible string (default: the config's, if a config exists)
    #[arg(long)]
    pub compatible: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}
