//! `abupdate`: parse the command line, run, print the whole error chain, exit with its code.

use clap::Parser;

fn main() {
    let cli = abupdate::cli::Cli::parse();
    cli.verbosity.init_logging();
    if let Err(e) = abupdate::run(cli) {
        eprintln!("abupdate: error: {e:#}");
        std::process::exit(abupdate::exit_code(&e));
    }
}
