//! `abbuild`: turns a system (a Nix toplevel or a directory) into a signed update bundle and
//! a bootable disk image. `main.rs` only parses arguments and calls [`run`].

pub mod bios;
pub mod build;
pub mod bundle;
pub mod cli;
pub mod cmd;
pub mod disk;
pub mod esp;
pub mod grub;
pub mod image_def;
pub mod inspect;
pub mod keygen;
pub mod publish;
pub mod squashfs;
pub mod system;
pub mod verity;

use abbundle::error::exit;
use abbundle::FormatError;

/// Runs one command.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Keygen(a) => keygen::run(&a),
        cli::Command::Bundle(a) => bundle::run(&a),
        cli::Command::Build(a) => build::run_cli(&a),
        cli::Command::Rootfs(a) => build::run_rootfs(&a),
        cli::Command::Inspect(a) => inspect::run(&a),
        cli::Command::Publish(a) => publish::run(&a),
    }
}

/// The documented exit code for an error (`docs/exit-codes.md`).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<FormatError>())
        .map(FormatError::exit_code)
        .unwrap_or(exit::FAILURE)
}
