//! `abupdate`: verifies bundles and installs them into the inactive slot, flips the boot
//! loader's state with boot counting (through `boot::BootLoader`), and reports state.
//! `main.rs` only parses arguments and calls [`run`].

pub mod boot;
pub mod cli;
pub mod cmd;
pub mod codes;
pub mod disk;
pub mod fault;
pub mod fetch;
pub mod install;
pub mod progress;
pub mod state;

pub use cmd::exit_code;
pub use state::Context;

use cmd::{bootcheck, corrupt, mark, status, update, verify};
use install::apply;
use state::config;

/// Runs one command.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let config = config::Config::load(&cli.config)?;
    let keys = cli.keys.clone().unwrap_or_else(|| config.keys.clone());
    let ctx = Context {
        config,
        config_path: cli.config.clone(),
        keys,
        disk: cli.disk.clone(),
        quiet: cli.verbosity.quiet,
    };
    match cli.command {
        cli::Command::Verify(a) => verify::run(&a, &ctx.keys, &ctx.config),
        cli::Command::Apply(a) => apply::run(
            &ctx,
            &apply::Request {
                source: &a.source,
                allow_downgrade: a.allow_downgrade,
                slot: a.slot,
                reboot: a.reboot,
                expect_manifest_sha256: None,
                expect_version: None,
                dry_run: a.dry_run,
                json: a.json,
                full: a.full,
            },
        ),
        cli::Command::Status(a) => status::run(&ctx, a.json),
        cli::Command::MarkGood => mark::mark_good(&ctx),
        cli::Command::MarkBad(a) => mark::mark_bad(&ctx, a.slot),
        cli::Command::Rollback => mark::rollback(&ctx),
        cli::Command::BootCheck => bootcheck::run(&ctx),
        cli::Command::MarkCorrupt(a) => corrupt::run(&ctx, a.slot, &a.detail),
        cli::Command::Update(a) => update::run(&ctx, &a),
    }
}
