//! `abupdate verify`: everything `apply` checks, without writing anything.

use std::path::Path;
use std::time::Instant;

use abbundle::{BundleReader, FormatError, TrustedKeys};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::info;

use crate::cli::VerifyArgs;
use crate::config::Config;
use crate::source;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    api_version: &'static str,
    kind: &'static str,
    compatible: String,
    version: String,
    build_id: String,
    signed_by: String,
    bytes_verified: u64,
}

pub fn run(a: &VerifyArgs, keys_dir: &Path, config: &Config) -> Result<()> {
    let keys = TrustedKeys::load_dir(keys_dir)
        .with_context(|| format!("loading trusted keys from {}", keys_dir.display()))?;
    let start = Instant::now();
    // The same source as apply's: a file, a block device (read up to the bundle's end), a URL.
    let stream = source::open(&a.bundle, config)?;
    let shown = source::redact(&a.bundle);
    let mut reader =
        BundleReader::open(stream, &keys).with_context(|| format!("verifying {shown}"))?;
    if let Some(c) = a.compatible.as_ref().or(config.compatible.as_ref()) {
        reader.check_compatible(c)?;
    }
    check_payloads(&mut reader).with_context(|| format!("verifying {shown}"))?;
    let m = reader.manifest();
    let bytes: u64 = m.payloads.iter().map(|p| p.size).sum();
    let report = Report {
        api_version: "abupdate/v1",
        kind: "VerifyReport",
        compatible: m.compatible.clone(),
        version: m.version.to_string(),
        build_id: m.build_id.clone(),
        signed_by: reader.signed_by().to_string(),
        bytes_verified: bytes,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "OK: {} version {} for '{}', signed by {}, {} bytes verified",
            shown, report.version, report.compatible, report.signed_by, bytes
        );
    }
    info!("verified in {:.2?}", start.elapsed());
    Ok(())
}

/// Reads every chunk (each checked against the signed chunk table by the reader) and also
/// checks each payload's whole-file sha256 from the manifest: a signed manifest whose sha256
/// does not match its own chunks was built wrong, and apply's ESP read-back compares the
/// kernel and initrd with that sha256.
fn check_payloads<R: std::io::Read>(reader: &mut BundleReader<R>) -> Result<(), FormatError> {
    let want: Vec<_> = reader
        .manifest()
        .payloads
        .iter()
        .map(|p| (p.kind, p.sha256.0))
        .collect();
    let mut h = Sha256::new();
    while let Some(c) = reader.next_chunk()? {
        h.update(c.data);
        if c.last {
            let digest = h.finalize_reset();
            if want
                .iter()
                .any(|(k, d)| *k == c.kind && digest[..] != d[..])
            {
                return Err(FormatError::BadManifest(format!(
                    "the {} payload does not match the sha256 in the signed manifest, although \
                     every chunk does: the bundle was built wrong",
                    c.kind
                )));
            }
        }
    }
    Ok(())
}
