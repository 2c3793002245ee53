//! Feeds arbitrary bytes to the channel file reader (abbundle::channel): it must return an
//! error or a document, never panic or allocate without bound. The trusted key is the same
//! fixed test key as bundle_reader's, so inputs mutated from the seed (a signed channel file
//! scripts/fuzz.sh writes) reach the document parser too.
#![no_main]

use abbundle::channel;
use abbundle::{SecretKey, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = channel::read_unverified(data);
    let keys = TrustedKeys::new(vec![SecretKey::from_seed([0x11; 32], "fuzz-test-only").public()]);
    if let Ok((doc, _)) = channel::open(data, &keys) {
        assert!(doc.rollout <= 100);
        assert!(!doc.bundle.contains(".."));
    }
});
