//! Every kind of damaged, hostile or unwanted bundle is refused with its own error.
//! Bundles are written by the crate's writer and also assembled by hand from the format
//! description, so the reader is checked against the spec, not only against the writer.

use std::io::Cursor;

use abbundle::header::{Header, HEADER_LEN, SIGNATURE_ENTRY_LEN};
use abbundle::{
    align_up, write_bundle, BundleInput, BundleReader, FormatError, PayloadInput, PayloadKind,
    SecretKey, Signer, TrustedKeys,
};
use sha2::{Digest as _, Sha256};

/// Test-only keys from fixed seeds.
fn test_key() -> SecretKey {
    SecretKey::from_seed([0x11; 32], "test-only")
}
fn other_key() -> SecretKey {
    SecretKey::from_seed([0x22; 32], "test-only-other")
}
fn trusted() -> TrustedKeys {
    TrustedKeys::new(vec![test_key().public()])
}

/// Deterministic filler that is not all zeros (so flips and truncations change hashes).
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

struct Sample {
    bytes: Vec<u8>,
    manifest: abbundle::Manifest,
}

fn sample_with(kernel_params: &str, signers: &[&dyn Signer]) -> Sample {
    let (mut r, mut k, mut i) = (
        Cursor::new(data(100_000, 1)),
        Cursor::new(data(20_000, 2)),
        Cursor::new(data(9_000, 3)),
    );
    let input = BundleInput {
        compatible: "test-board".into(),
        version: "2026.11.22.1".parse().unwrap(),
        build_id: "/nix/store/00000000000000000000000000000000-test".into(),
        created: 1_700_000_000,
        kernel_params: kernel_params.into(),
        chunk_size: 4096,
        format: abbundle::FORMAT_VERSION,
    };
    let mut payloads = [
        PayloadInput {
            kind: PayloadKind::Kernel,
            source: &mut k,
        },
        PayloadInput {
            kind: PayloadKind::Rootfs,
            source: &mut r,
        },
        PayloadInput {
            kind: PayloadKind::Initrd,
            source: &mut i,
        },
    ];
    let mut bytes = Vec::new();
    let manifest = write_bundle(&mut bytes, &input, &mut payloads, signers).unwrap();
    Sample { bytes, manifest }
}

fn sample() -> Sample {
    sample_with("console=ttyS0", &[&test_key()])
}

/// Reads a whole bundle, returning the first error.
fn read_all(
    bytes: &[u8],
    keys: &TrustedKeys,
    compatible: &str,
) -> Result<Vec<Vec<u8>>, FormatError> {
    let mut r = BundleReader::open(Cursor::new(bytes), keys)?;
    r.check_compatible(compatible)?;
    let mut out = vec![Vec::new(), Vec::new(), Vec::new()];
    while let Some(c) = r.next_chunk()? {
        let i = PayloadKind::ORDER
            .iter()
            .position(|k| *k == c.kind)
            .unwrap();
        assert_eq!(out[i].len() as u64, c.offset);
        out[i].extend_from_slice(c.data);
    }
    Ok(out)
}

fn manifest_range(b: &[u8]) -> std::ops::Range<usize> {
    let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).unwrap();
    HEADER_LEN..HEADER_LEN + h.manifest_len as usize
}

#[test]
fn good_bundle_reads_back_exactly() {
    let s = sample();
    let out = read_all(&s.bytes, &trusted(), "test-board").unwrap();
    assert_eq!(out[0], data(100_000, 1));
    assert_eq!(out[1], data(20_000, 2));
    assert_eq!(out[2], data(9_000, 3));
    for p in &s.manifest.payloads {
        assert_eq!(p.offset % 4096, 0);
    }
    assert_eq!(
        s.manifest.payload(PayloadKind::Rootfs).sha256.0,
        <[u8; 32]>::from(Sha256::digest(data(100_000, 1)))
    );
}

#[test]
fn writer_is_deterministic() {
    assert_eq!(sample().bytes, sample().bytes);
}

#[test]
fn truncation_anywhere_is_reported_as_truncation() {
    let s = sample();
    let b = &s.bytes;
    let m = manifest_range(b);
    let sigs_end = m.end + SIGNATURE_ENTRY_LEN;
    let mut cuts = vec![
        0,
        1,
        8,
        HEADER_LEN - 1,
        HEADER_LEN,
        m.start + 10,
        m.end - 1,
        m.end,
        m.end + 10,
        sigs_end,
        sigs_end + 1,
    ];
    for p in &s.manifest.payloads {
        let (o, e) = (p.offset as usize, p.end() as usize);
        cuts.extend([o - 1, o, o + 1, o + 4096, (o + e) / 2, e - 1]);
    }
    cuts.push(b.len() - 1);
    for cut in cuts {
        match read_all(&b[..cut], &trusted(), "test-board") {
            Err(FormatError::Truncated(section)) => assert!(!section.is_empty()),
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn bit_flips_in_each_section_are_caught() {
    let s = sample();
    let m = manifest_range(&s.bytes);
    let flip = |at: usize| {
        let mut b = s.bytes.clone();
        b[at] ^= 0x04;
        read_all(&b, &trusted(), "test-board")
    };
    // Header: every bit is covered by the unit test in header.rs; a few here end to end.
    for at in [0, 9, 17, 25, 33, 45, 61] {
        assert!(flip(at).is_err(), "header flip at {at} accepted");
    }
    // Manifest, including inside the chunk table: the signature no longer matches.
    let text = String::from_utf8(s.bytes[m.clone()].to_vec()).unwrap();
    let in_chunks = m.start + text.find("\"chunks\"").unwrap() + 20;
    for at in [m.start, m.start + 40, in_chunks, m.end - 2] {
        assert!(
            matches!(flip(at), Err(FormatError::BadSignature(_))),
            "manifest flip at {at}"
        );
    }
    // Signature: key id (then nobody trusted signed it) and signature bytes.
    assert!(matches!(flip(m.end), Err(FormatError::UntrustedKey { .. })));
    assert!(matches!(
        flip(m.end + 8 + 30),
        Err(FormatError::BadSignature(_))
    ));
    // Chunk index (format 2), first and last byte: its signed digest no longer matches.
    let h = Header::decode(s.bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
    let index = h.signatures_end() as usize..h.index_end() as usize;
    assert_eq!(index.start, m.end + SIGNATURE_ENTRY_LEN);
    for at in [index.start, index.end - 1] {
        assert!(
            matches!(flip(at), Err(FormatError::IndexMismatch)),
            "index flip at {at}"
        );
    }
    // Padding between sections.
    assert!(
        h.payloads_offset as usize > index.end,
        "sample has no padding"
    );
    assert!(matches!(flip(index.end), Err(FormatError::BadPadding(_))));
    // Each payload, first and last byte.
    for p in &s.manifest.payloads {
        for at in [p.offset as usize, p.end() as usize - 1] {
            match flip(at) {
                Err(FormatError::ChunkHashMismatch { payload, .. }) => {
                    assert_eq!(payload, p.kind.name())
                }
                other => panic!("payload flip at {at}: {other:?}"),
            }
        }
    }
}

#[test]
fn trailing_data_is_refused() {
    let mut b = sample().bytes;
    b.push(0);
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::TrailingData(_))
    ));
}

/// Rewrites header fields and fixes up the checksum, as a hostile or newer writer would.
fn patch_header(b: &mut [u8], at: usize, value: &[u8]) {
    b[at..at + value.len()].copy_from_slice(value);
    let crc = crc32(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn crc32(b: &[u8]) -> u32 {
    // Plain bitwise CRC-32 (IEEE), independent of the crate's implementation.
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn unknown_format_version_is_refused() {
    let mut b = sample().bytes;
    patch_header(&mut b, 8, &3u32.to_le_bytes());
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::UnsupportedVersion { found: 3, .. })
    ));
}

/// A format 2 bundle relabelled as format 1 in its header (as a device that reads only format
/// 1 would see it, had it skipped the version check) is refused: the header's index length and
/// the manifest's format both disagree.
#[test]
fn format_2_relabelled_as_1_is_refused() {
    let mut b = sample().bytes;
    patch_header(&mut b, 8, &1u32.to_le_bytes());
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::BadHeader(_))
    ));
}

#[test]
fn index_digest_mismatch_has_its_own_exit_code() {
    let s = sample();
    let h = Header::decode(s.bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
    let mut b = s.bytes.clone();
    // A chunk length changed: the entries would still add up wrongly, but the digest is
    // checked first, so whatever the change, it reads as a mismatch.
    b[h.signatures_end() as usize] ^= 1;
    let e = read_all(&b, &trusted(), "test-board").unwrap_err();
    assert!(matches!(e, FormatError::IndexMismatch), "{e:?}");
    assert_eq!(e.exit_code(), abbundle::error::exit::BAD_INDEX);
    assert_eq!(e.exit_code(), 19);
}

#[test]
fn format_2_index_describes_every_payload() {
    let s = sample();
    let r = BundleReader::open(Cursor::new(&s.bytes[..]), &trusted()).unwrap();
    let idx = r.index().expect("format 2 has an index");
    for (entries, (p, want)) in idx.payloads.iter().zip(s.manifest.payloads.iter().zip([
        data(100_000, 1),
        data(20_000, 2),
        data(9_000, 3),
    ])) {
        let mut at = 0usize;
        for e in entries {
            let chunk = &want[at..at + e.len as usize];
            assert_eq!(e.digest.0, <[u8; 32]>::from(Sha256::digest(chunk)));
            at += e.len as usize;
        }
        assert_eq!(at as u64, p.size);
    }
}

#[test]
fn format_1_is_still_written_and_read() {
    let (mut r, mut k, mut i) = (
        Cursor::new(data(100_000, 1)),
        Cursor::new(data(20_000, 2)),
        Cursor::new(data(9_000, 3)),
    );
    let input = BundleInput {
        compatible: "test-board".into(),
        version: "1".parse().unwrap(),
        build_id: String::new(),
        created: 0,
        kernel_params: String::new(),
        chunk_size: 4096,
        format: abbundle::FORMAT_V1,
    };
    let mut payloads = [
        PayloadInput {
            kind: PayloadKind::Rootfs,
            source: &mut r,
        },
        PayloadInput {
            kind: PayloadKind::Kernel,
            source: &mut k,
        },
        PayloadInput {
            kind: PayloadKind::Initrd,
            source: &mut i,
        },
    ];
    let mut bytes = Vec::new();
    let m = write_bundle(&mut bytes, &input, &mut payloads, &[&test_key()]).unwrap();
    assert_eq!(m.format, 1);
    assert!(m.chunk_index.is_none());
    // Byte 8: version 1, as releases before format 2 require; no index, so the payloads
    // follow the signatures at the next 4096 bytes, exactly as format 1 specifies.
    assert_eq!(bytes[8..12], 1u32.to_le_bytes());
    let h = Header::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(h.payloads_offset, align_up(h.signatures_end()));
    assert!(!String::from_utf8_lossy(&bytes[manifest_range(&bytes)]).contains("chunk_index"));
    let out = read_all(&bytes, &trusted(), "test-board").unwrap();
    assert_eq!(out[0], data(100_000, 1));
}

#[test]
fn oversized_lengths_are_refused_before_allocating() {
    let mut b = sample().bytes;
    patch_header(&mut b, 16, &u32::MAX.to_le_bytes());
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::TooLarge { .. })
    ));
    let mut b = sample().bytes;
    patch_header(
        &mut b,
        16,
        &(abbundle::limits::MAX_MANIFEST_LEN + 1).to_le_bytes(),
    );
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::TooLarge { .. })
    ));
    let mut b = sample().bytes;
    patch_header(&mut b, 20, &1000u32.to_le_bytes());
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::TooLarge { .. })
    ));
}

#[test]
fn wrong_key_and_missing_signature_are_refused() {
    let s = sample_with("", &[&other_key()]);
    assert!(matches!(
        read_all(&s.bytes, &trusted(), "test-board"),
        Err(FormatError::UntrustedKey { .. })
    ));
    // Signed by both: accepted by a device trusting either key.
    let s = sample_with("", &[&other_key(), &test_key()]);
    assert!(read_all(&s.bytes, &trusted(), "test-board").is_ok());

    // No signature: strip the entry; choose parameters so the payloads stay where they are.
    for pad in 0.. {
        let s = sample_with(&"x".repeat(pad), &[&test_key()]);
        let m = manifest_range(&s.bytes);
        if align_up(m.end as u64) != s.manifest.payloads[0].offset {
            continue;
        }
        let mut b = s.bytes.clone();
        b.drain(m.end..m.end + SIGNATURE_ENTRY_LEN);
        b.splice(m.end..m.end, std::iter::repeat_n(0, SIGNATURE_ENTRY_LEN));
        patch_header(&mut b, 20, &0u32.to_le_bytes());
        assert!(matches!(
            read_all(&b, &trusted(), "test-board"),
            Err(FormatError::NoSignature)
        ));
        break;
    }
}

#[test]
fn incompatible_bundle_is_refused() {
    let s = sample();
    match read_all(&s.bytes, &trusted(), "other-board") {
        Err(FormatError::Incompatible { expected, found }) => {
            assert_eq!(
                (expected.as_str(), found.as_str()),
                ("other-board", "test-board")
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Assembles a bundle by hand from docs/bundle-format.md: header, manifest, signatures,
/// padding, payloads.
fn assemble(manifest: &str, payloads: &[&[u8]], key: &SecretKey) -> Vec<u8> {
    let m = manifest.as_bytes();
    let sigs_end = (HEADER_LEN + m.len() + SIGNATURE_ENTRY_LEN) as u64;
    let mut b = Vec::new();
    b.extend_from_slice(b"\x89ABU\r\n\x1a\n");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&64u32.to_le_bytes());
    b.extend_from_slice(&(m.len() as u32).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&align_up(sigs_end).to_le_bytes());
    let mut end = align_up(sigs_end);
    for (i, p) in payloads.iter().enumerate() {
        end += p.len() as u64;
        if i + 1 < payloads.len() {
            end = align_up(end);
        }
    }
    b.extend_from_slice(&end.to_le_bytes());
    b.resize(60, 0);
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(m);
    b.extend_from_slice(&key.key_id().0);
    b.extend_from_slice(&key.sign(m));
    for p in payloads {
        b.resize(align_up(b.len() as u64) as usize, 0);
        b.extend_from_slice(p);
    }
    b
}

fn hand_manifest(
    kernel_params: &str,
    chunk_size: u32,
    sizes: [usize; 3],
    offsets: [u64; 3],
    chunks: [Vec<String>; 3],
) -> String {
    let kinds = ["rootfs", "kernel", "initrd"];
    let payloads: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"kind":"{}","offset":{},"size":{},"sha256":"{}","chunk_size":{},"chunks":[{}]}}"#,
                kinds[i],
                offsets[i],
                sizes[i],
                "0".repeat(64),
                chunk_size,
                chunks[i].iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    format!(
        r#"{{"format":1,"compatible":"test-board","version":"7","build_id":"","created":0,"kernel_params":"{}","payloads":[{}]}}"#,
        kernel_params,
        payloads.join(",")
    )
}

fn chunk_hashes(p: &[u8], chunk: usize) -> Vec<String> {
    p.chunks(chunk)
        .map(|c| hex::encode(Sha256::digest(c)))
        .collect()
}

/// Builds a hand-made bundle whose manifest length is stable (offsets depend on it).
fn hand_bundle(chunk_size: u32, table_chunk: usize, payloads: [&[u8]; 3]) -> Vec<u8> {
    hand_bundle_with_params("", chunk_size, table_chunk, payloads)
}

fn hand_bundle_with_params(
    kernel_params: &str,
    chunk_size: u32,
    table_chunk: usize,
    payloads: [&[u8]; 3],
) -> Vec<u8> {
    let mut offsets = [0u64; 3];
    let mut m = String::new();
    for _ in 0..4 {
        m = hand_manifest(
            kernel_params,
            chunk_size,
            payloads.map(|p| p.len()),
            offsets,
            payloads.map(|p| chunk_hashes(p, table_chunk)),
        );
        let mut o = align_up((HEADER_LEN + m.len() + SIGNATURE_ENTRY_LEN) as u64);
        for (i, p) in payloads.iter().enumerate() {
            offsets[i] = o;
            o = align_up(o + p.len() as u64);
        }
    }
    assemble(&m, &payloads, &test_key())
}

#[test]
fn hand_assembled_bundle_from_the_spec_is_accepted() {
    let (r, k, i) = (data(10_000, 4), data(5000, 5), data(4096, 6));
    let b = hand_bundle(4096, 4096, [&r, &k, &i]);
    let out = read_all(&b, &trusted(), "test-board").unwrap();
    assert_eq!(out, vec![r, k, i]);
}

#[test]
fn signed_but_invalid_manifests_are_refused() {
    let (r, k, i) = (data(10_000, 4), data(5000, 5), data(4096, 6));
    // A chunk table of the wrong length, even when signed.
    let b = hand_bundle(4096, 8192, [&r, &k, &i]);
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::BadManifest(_))
    ));
    // A chunk size above the bound (the reader's one buffer would grow with it).
    let big = abbundle::limits::MAX_CHUNK_SIZE * 2;
    let b = hand_bundle(big, big as usize, [&r, &k, &i]);
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::BadManifest(_))
    ));
    // Not JSON at all.
    let b = assemble("not json", &[&r, &k, &i], &test_key());
    assert!(read_all(&b, &trusted(), "test-board").is_err());
}

#[test]
fn kernel_params_that_name_a_slot_or_root_are_refused() {
    let (r, k, i) = (data(10_000, 4), data(5000, 5), data(4096, 6));
    let ok = hand_bundle_with_params("console=ttyS0 quiet", 4096, 4096, [&r, &k, &i]);
    read_all(&ok, &trusted(), "test-board").unwrap();
    // Signed by a trusted key, and still refused: the device sets these per slot.
    for params in [
        "quiet ab.slot=b",
        "root=/dev/sda2",
        "console=ttyS0 root=PARTLABEL=root-a",
    ] {
        let b = hand_bundle_with_params(params, 4096, 4096, [&r, &k, &i]);
        match read_all(&b, &trusted(), "test-board") {
            Err(FormatError::BadManifest(m)) => assert!(m.contains("not allowed"), "{m}"),
            other => panic!("{params}: {:?}", other.map(|_| ())),
        }
    }
}

/// Signs with `key`'s id but over other bytes: a signature entry that does not verify.
struct WrongSigner(SecretKey);

impl Signer for WrongSigner {
    fn key_id(&self) -> abbundle::KeyId {
        self.0.key_id()
    }
    fn sign(&self, _message: &[u8]) -> [u8; 64] {
        self.0.sign(b"not the manifest")
    }
}

/// docs/bundle-format.md: a trusted key id whose signature does not verify is an error at
/// once, whatever else is in the list (a good signature after it, or before it).
#[test]
fn bad_signature_by_a_trusted_key_fails_even_next_to_a_good_one() {
    let bad = WrongSigner(test_key());
    for signers in [
        [&bad as &dyn Signer, &test_key()],
        [&test_key() as &dyn Signer, &bad],
    ] {
        let s = sample_with("", &signers);
        match read_all(&s.bytes, &trusted(), "test-board") {
            Err(e @ FormatError::BadSignature(_)) => {
                assert_eq!(e.exit_code(), abbundle::error::exit::BAD_SIGNATURE)
            }
            other => panic!(
                "accepted a bad signature by a trusted key: {:?}",
                other.map(|_| ())
            ),
        }
    }
    // A bad entry by a key nobody trusts is still skipped.
    let s = sample_with("", &[&WrongSigner(other_key()), &test_key()]);
    assert!(read_all(&s.bytes, &trusted(), "test-board").is_ok());
}

/// The signature count is a count, not a size.
#[test]
fn too_many_signatures_reads_as_a_count() {
    let mut b = sample().bytes;
    let n = abbundle::limits::MAX_SIGNATURES + 1;
    patch_header(&mut b, 20, &n.to_le_bytes());
    let e = read_all(&b, &trusted(), "test-board").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "signature list is too large: {n} signatures, the limit is {}",
            abbundle::limits::MAX_SIGNATURES
        )
    );
}

/// dm-verity parameters ride in `kernel_params` (docs/bundle-format.md, "dm-verity"); a
/// reader takes them only when they describe the root payload: image, padding, hash area.
#[test]
fn verity_parameters_must_describe_the_root_payload() {
    let img = data(10_000, 4);
    let (v, area) = abbundle::verity::format(
        |at, buf| {
            buf.copy_from_slice(&img[at as usize..at as usize + buf.len()]);
            Ok(())
        },
        img.len() as u64,
    )
    .unwrap();
    let mut r = img.clone();
    r.resize(v.hash_offset as usize, 0);
    r.extend_from_slice(&area);
    let (k, i) = (data(5000, 5), data(4096, 6));
    let param = v.param();
    let ok = hand_bundle_with_params(&format!("console=ttyS0 {param}"), 4096, 4096, [&r, &k, &i]);
    read_all(&ok, &trusted(), "test-board").unwrap();
    let mut fewer = v;
    fewer.data_blocks -= 1;
    fewer.hash_offset -= 4096;
    for params in [
        fewer.param(),
        format!("{param} {param}"),
        param.replace(',', ":"),
        param
            .to_uppercase()
            .replace("ABINIT.VERITY=", "abinit.verity="),
    ] {
        let b = hand_bundle_with_params(&params, 4096, 4096, [&r, &k, &i]);
        match read_all(&b, &trusted(), "test-board") {
            Err(FormatError::BadManifest(m)) => assert!(m.contains("verity"), "{m}"),
            other => panic!("{params}: {:?}", other.map(|_| ())),
        }
    }
    // The parameter over the plain image, without its hash area.
    let b = hand_bundle_with_params(&param, 4096, 4096, [&img, &k, &i]);
    assert!(matches!(
        read_all(&b, &trusted(), "test-board"),
        Err(FormatError::BadManifest(_))
    ));
}

/// What lets a device on a release before verity install the bundle that brings it: the
/// manifest of a bundle with a tree has exactly the fields the previous release's manifest
/// parser (`#[serde(deny_unknown_fields)]`) knows, and the tree's parameter passes its
/// `kernel_params` rules (unchanged: printable, at most 4096 bytes, no `ab.slot=`/`root=`).
/// A new manifest field would make that release refuse the bundle (exit 10).
#[test]
fn a_verity_manifest_has_only_the_previous_releases_fields() {
    let img = data(300_000, 9);
    let (v, area) = abbundle::verity::format(
        |at, buf| {
            buf.copy_from_slice(&img[at as usize..at as usize + buf.len()]);
            Ok(())
        },
        img.len() as u64,
    )
    .unwrap();
    let mut root = img.clone();
    root.resize(v.hash_offset as usize, 0);
    root.extend_from_slice(&area);
    let mut src = Cursor::new(root);
    let (mut k, mut i) = (Cursor::new(data(20_000, 2)), Cursor::new(data(5000, 3)));
    let input = BundleInput {
        compatible: "test-board".into(),
        version: "7".parse().unwrap(),
        build_id: String::new(),
        created: 0,
        kernel_params: format!("console=ttyS0 {}", v.param()),
        chunk_size: 4096,
        format: abbundle::FORMAT_VERSION,
    };
    let mut out = Vec::new();
    let m = write_bundle(
        &mut out,
        &input,
        &mut [
            PayloadInput {
                kind: PayloadKind::Rootfs,
                source: &mut src,
            },
            PayloadInput {
                kind: PayloadKind::Kernel,
                source: &mut k,
            },
            PayloadInput {
                kind: PayloadKind::Initrd,
                source: &mut i,
            },
        ],
        &[&test_key() as &dyn Signer],
    )
    .unwrap();
    assert_eq!(m.verity(), Some(v));
    let json: serde_json::Value = serde_json::from_slice(&out[manifest_range(&out)]).unwrap();
    let keys = |o: &serde_json::Value| {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    // The fields of bundle/src/manifest.rs before verity, spelled out here on purpose.
    assert_eq!(
        keys(&json),
        [
            "build_id",
            "chunk_index",
            "compatible",
            "created",
            "format",
            "kernel_params",
            "payloads",
            "version"
        ]
    );
    for p in json["payloads"].as_array().unwrap() {
        assert_eq!(
            keys(p),
            ["chunk_size", "chunks", "kind", "offset", "sha256", "size"]
        );
    }
    let kp = json["kernel_params"].as_str().unwrap();
    assert!(kp.len() <= 4096 && kp.chars().all(|c| !c.is_control()));
    abbundle::layout::check_kernel_params(kp).unwrap();
}
