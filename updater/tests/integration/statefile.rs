//! boot-check writes its state file through a temporary name; whatever is planted at that
//! name (a symlink to a file elsewhere) must not be written through.

use std::fs;

use crate::util::*;

#[test]
fn boot_check_does_not_follow_a_symlink_at_the_temporary_path() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let outside = env.path("outside.txt");
    fs::write(&outside, "not abupdate's\n").unwrap();
    fs::create_dir_all(env.path("state")).unwrap();
    std::os::unix::fs::symlink(&outside, env.path("state/state.json.tmp")).unwrap();
    ok(&env.abupdate_booted(&disk, Some("a"), &["boot-check"]));
    assert_eq!(fs::read_to_string(&outside).unwrap(), "not abupdate's\n");
    let state = env.path("state/state.json");
    assert!(fs::symlink_metadata(&state).unwrap().is_file());
    let record: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    assert_eq!(record["bootedSlot"], "a");
    assert!(!env.path("state/state.json.tmp").exists());
}

/// What can sit where a state file belongs instead of a file.
fn not_a_file(env: &Env, p: &std::path::Path, kind: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    match kind {
        "symlink" => {
            let target = env.path("elsewhere");
            fs::write(&target, format!("{}\n", "ab".repeat(16))).unwrap();
            std::os::unix::fs::symlink(&target, p).unwrap();
        }
        "directory" => fs::create_dir_all(p).unwrap(),
        "fifo" => mkfifo(p),
        _ => unreachable!(),
    }
}

/// `machine-id` or `state.json` as a symlink, a directory or a FIFO: machine-id made
/// `update` recurse until its stack overflowed (exit 134), a FIFO at state.json hung every
/// `update`. Now: machine-id is an error naming it, state.json is skipped like a missing one,
/// nothing hangs and the disk does not change.
#[test]
fn state_files_that_are_not_regular_files() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let tree = env.path("www");
    abbuild::publish::publish(&abbuild::cli::PublishArgs {
        bundle: v2.bundle.clone(),
        channel: "stable".into(),
        key: vec![env.path("test-only.key")],
        out_dir: tree.clone(),
        image: Some("vps".into()),
        rollout: 100,
        valid_for: "1d".into(),
        sequence: None,
    })
    .unwrap();
    let channel = tree.join("vps/stable.json").display().to_string();
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    let check = || {
        output_within(
            &mut env.cmd(
                &disk,
                None,
                &["update", "--now", "--dry-run", "--channel", &channel],
            ),
            60,
        )
    };
    for kind in ["symlink", "directory", "fifo"] {
        let state = env.path("state");
        let _ = fs::remove_dir_all(&state);
        not_a_file(&env, &state.join("machine-id"), kind);
        let o = check();
        let line = fails(&o, 1);
        assert!(
            line.contains("machine-id") && line.contains("machine id"),
            "{kind}: {line}"
        );
        assert_eq!(sha256_file(&disk), before, "{kind}");
        if kind == "symlink" {
            assert_eq!(
                fs::read_to_string(env.path("elsewhere")).unwrap(),
                format!("{}\n", "ab".repeat(16))
            );
        }

        fs::remove_dir_all(&state).unwrap();
        not_a_file(&env, &state.join("state.json"), kind);
        let o = check();
        assert_eq!(
            o.status.code(),
            Some(abupdate::codes::UPDATE_AVAILABLE),
            "{kind}: {o:?}"
        );
        let o = output_within(&mut env.cmd(&disk, None, &["status"]), 60);
        ok(&o);
    }
}

/// A FIFO at the lock file's path: opening it for writing waited for a reader for ever.
#[test]
fn lock_file_that_is_a_fifo_does_not_hang() {
    let env = Env::new();
    let v1 = env.build("2026.11.1", 1, 64 * 1024);
    let v2 = env.build("2026.11.2", 2, 64 * 1024);
    let disk = env.path("disk.img");
    copy_image(&v1.image, &disk);
    let before = sha256_file(&disk);
    mkfifo(&env.path("lock"));
    let bundle = v2.bundle.display().to_string();
    let o = output_within(&mut env.cmd(&disk, None, &["apply", &bundle]), 60);
    let line = fails(&o, 1);
    assert!(line.contains("lock file"), "{line}");
    assert_eq!(sha256_file(&disk), before);
}
