//! `abbuild`: parse the command line, run, print the whole error chain, exit with its code.

use clap::Parser;

fn main() {
    let cli = abbuild::cli::Cli::parse();
    cli.verbosity.init_logging();
    if let Err(e) = abbuild::run(cli) {
        eprintln!("abbuild: error: {e:#}");
        std::process::exit(abbuild::exit_code(&e));
    }
}
