//! `abdocgen TOOL DIR`: writes the man pages and shell completions of `abbuild` or `abupdate`,
//! generated from the clap definitions the tool parses its arguments with, into DIR:
//! `man1/TOOL.1` and `man1/TOOL-SUB.1` for each subcommand, and `completions/TOOL.bash`,
//! `completions/_TOOL` (zsh), `completions/TOOL.fish`. The Nix packages run it and install the
//! result (and not it); `scripts/docgen.sh` runs it for everyone else; `scripts/test.sh` checks
//! that a page renders and that the bash completion loads.
//!
//! A program of its own rather than a build script or a hidden subcommand: a build script
//! would compile each tool's `cli.rs` outside its crate (it names the crate's own types and
//! constants), and a subcommand would put the roff and completion generators into `abupdate`,
//! whose size on devices is budgeted (docs/benchmarks.md). As a workspace member it is built,
//! linted and tested with everything else, and the tools carry none of it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The tools, by name.
fn tool(name: &str) -> Option<Command> {
    match name {
        "abbuild" => Some(abbuild::cli::Cli::command()),
        "abupdate" => Some(abupdate::cli::Cli::command()),
        _ => None,
    }
}

/// Writes `cmd`'s pages and completions into `dir` (see the module comment); returns the files
/// written.
fn write(mut cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    // Built, global options (--disk, -v) show in each subcommand's page too, and a subcommand
    // is titled TOOL-SUB.
    cmd.build();
    let name = cmd.get_name().to_string();
    let man = dir.join("man1");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    let mut written = Vec::new();
    let mut page = |c: &Command, file: String| -> io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c.clone()).render(&mut out)?;
        let path = man.join(file);
        fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    page(&cmd, format!("{name}.1"))?;
    // Not the `help` subcommand clap adds: every page documents --help already.
    let subs = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in subs {
        page(sub, format!("{name}-{}.1", sub.get_name()))?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            &name,
            &completions,
        )?);
    }
    Ok(written)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dir) = match args.as_slice() {
        [t, dir] if tool(t).is_some() => (tool(t).expect("checked"), dir),
        _ => {
            eprintln!("usage: abdocgen abbuild|abupdate DIR");
            std::process::exit(2);
        }
    };
    match write(cmd, Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("abdocgen: error: writing into {dir}: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path, files: &[PathBuf]) -> Vec<String> {
        let mut v: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn abupdate_gets_a_page_per_subcommand_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(tool("abupdate").unwrap(), dir.path()).unwrap();
        assert_eq!(
            names(dir.path(), &files),
            [
                "completions/_abupdate",
                "completions/abupdate.bash",
                "completions/abupdate.fish",
                "man1/abupdate-apply.1",
                "man1/abupdate-boot-check.1",
                "man1/abupdate-mark-bad.1",
                "man1/abupdate-mark-corrupt.1",
                "man1/abupdate-mark-good.1",
                "man1/abupdate-rollback.1",
                "man1/abupdate-status.1",
                "man1/abupdate-update.1",
                "man1/abupdate-verify.1",
                "man1/abupdate.1",
            ]
        );
        let apply = fs::read_to_string(dir.path().join("man1/abupdate-apply.1")).unwrap();
        assert!(apply.contains(".TH abupdate-apply 1"), "{apply}");
        assert!(apply.contains("allow\\-downgrade"), "{apply}");
        // A global option reaches the subcommand's page.
        assert!(apply.contains("\\-\\-disk"), "{apply}");
        let bash = fs::read_to_string(dir.path().join("completions/abupdate.bash")).unwrap();
        assert!(bash.contains("complete -F _abupdate"), "{bash}");
        assert!(bash.contains("mark-good"), "{bash}");
    }

    #[test]
    fn abbuild_gets_its_pages_too() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(tool("abbuild").unwrap(), dir.path()).unwrap();
        let names = names(dir.path(), &files);
        for sub in ["build", "bundle", "inspect", "keygen", "rootfs"] {
            assert!(
                names.contains(&format!("man1/abbuild-{sub}.1")),
                "{names:?}"
            );
        }
        assert!(tool("nothing").is_none());
    }
}
