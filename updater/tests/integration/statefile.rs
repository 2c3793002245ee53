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
