//! Reproducibility: the same input built twice, from different directories at different
//! times, gives the same bytes.

use std::fs;
use std::time::Duration;

use crate::util::*;

#[test]
fn same_input_same_bytes() {
    let one = tempfile::tempdir().unwrap();
    let (bundle1, image1) = build_fake(one.path());
    // Different mtimes and inode order in the input, another output directory.
    // More than FAT's two-second time resolution, so a clock leaking into the ESP would show.
    std::thread::sleep(Duration::from_millis(2100));
    let two = tempfile::tempdir().unwrap();
    let (bundle2, image2) = build_fake(two.path());
    assert!(
        fs::read(&bundle1).unwrap() == fs::read(&bundle2).unwrap(),
        "bundles differ"
    );
    assert!(
        fs::read(&image1).unwrap() == fs::read(&image2).unwrap(),
        "disk images differ"
    );
    // Nothing is left behind in the output directory.
    let names: Vec<_> = fs::read_dir(one.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
