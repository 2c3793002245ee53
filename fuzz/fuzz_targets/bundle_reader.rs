//! Feeds arbitrary bytes to the bundle reader: it must return an error or a result, never
//! panic, hang or allocate without bound. The trusted key is a fixed test key, so inputs that
//! get past the signature check are those derived from the seed corpus (see seed.rs in tests).
#![no_main]

use std::io::Cursor;

use abbundle::{reader::read_unverified, BundleReader, SecretKey, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_unverified(Cursor::new(data));
    let keys = TrustedKeys::new(vec![SecretKey::from_seed([0x11; 32], "fuzz-test-only").public()]);
    if let Ok(mut r) = BundleReader::open(Cursor::new(data), &keys) {
        let _ = r.check_compatible("fuzz");
        let _ = r.verify_rest();
    }
});
