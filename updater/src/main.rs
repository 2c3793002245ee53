//! `abupdate`: parse the command line, run, print the whole error chain, exit with its code.
//! Every error is printed as one line, passwords in URLs hidden, and a panic (a bug) as one
//! line too, without a backtrace.

use clap::Parser;

/// `message` on one line: a multi-line part (an external library's message) joined with " ".
fn one_line(message: &str) -> String {
    let flat: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    abupdate::fetch::redact(&flat.join(" "))
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "abupdate: error: internal error (a bug; please report it): {}{at}",
            one_line(&what)
        );
    }));
    let cli = abupdate::cli::Cli::parse();
    cli.verbosity.init_logging();
    if let Err(e) = abupdate::run(cli) {
        eprintln!("abupdate: error: {}", one_line(&format!("{e:#}")));
        std::process::exit(abupdate::exit_code(&e));
    }
}
