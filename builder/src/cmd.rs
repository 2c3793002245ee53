//! Running external programs (`mksquashfs`, `nix-store`, `qemu-img`) through one choke point:
//! the command line is logged at debug level and is part of every error, with the tail of
//! the program's stderr, so a failure can be reproduced by pasting it into a shell.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use tracing::debug;

/// Most stderr bytes quoted in an error: enough for mksquashfs' or nix's explanation.
const STDERR_TAIL: usize = 4000;

/// The command line as a shell would take it (arguments with special characters quoted).
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where `program` is on `PATH`, if anywhere.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file()))
}

/// Fails with `hint` (e.g. "install squashfs-tools") if `program` is not on `PATH`.
pub fn require_program(program: &str, hint: &str) -> Result<PathBuf> {
    find_program(program).ok_or_else(|| anyhow!("{program} not found in PATH ({hint})"))
}

/// Runs `cmd` to completion, feeding it `stdin` if given; returns its stdout. Errors name the
/// command line, the exit status and the end of stderr.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    let line = command_line(cmd);
    debug!("running {line}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A writer thread, so a child that fills its stdout pipe before reading all of stdin
        // cannot deadlock against us.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        let tail = match err.char_indices().rev().nth(STDERR_TAIL) {
            Some((i, _)) => format!("...{}", &err[i..]),
            None => err.to_string(),
        };
        bail!(
            "`{line}` failed ({}){}",
            out.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(":\n{tail}")
            }
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_errors() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo oops >&2; exit 3"]);
        assert_eq!(command_line(&c), "sh -c 'echo oops >&2; exit 3'");
        let e = format!("{:#}", run(&mut c, None).unwrap_err());
        assert!(
            e.contains("sh -c 'echo oops >&2; exit 3'") && e.contains("oops"),
            "{e}"
        );
        let out = run(&mut Command::new("cat"), Some(b"in")).unwrap();
        assert_eq!(out, b"in");
    }
}
