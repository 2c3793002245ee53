//! Every error reaches the user as one line (docs/exit-codes.md), even where a library's
//! message has several.

use std::fs;

use crate::util::*;

/// Exactly one line on stderr, the error; returns it.
fn only_line(o: &std::process::Output, code: i32) -> String {
    let line = fails(o, code);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    line
}

#[test]
fn config_errors_are_one_line_with_their_position() {
    let env = Env::new();
    let cfg = env.path("bad.toml");
    for (text, want) in [
        (
            "compatible = \"x\"\nbogus = 1\n",
            "line 2, column 1: unknown field `bogus`",
        ),
        (
            "boot-tries = \"three\"\n",
            "line 1, column 14: invalid type",
        ),
        ("compatible = [\n", "line 2, column 1: invalid array"),
    ] {
        fs::write(&cfg, text).unwrap();
        let err = only_line(
            &env.abupdate_cfg(&cfg, &env.path("no-disk"), &["status"]),
            1,
        );
        assert!(err.contains("bad.toml: ") && err.contains(want), "{err}");
    }
}
