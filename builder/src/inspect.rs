//! `abbuild inspect`: what a bundle says about itself. Nothing here is verified; use
//! `abupdate verify` for that.

use std::fs::File;
use std::io::BufReader;

use abbundle::reader::read_unverified;
use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::InspectArgs;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output<'a> {
    api_version: &'static str,
    kind: &'static str,
    manifest: &'a abbundle::Manifest,
    signature_key_ids: Vec<String>,
    total_size: u64,
}

pub fn run(a: &InspectArgs) -> Result<()> {
    let f = File::open(&a.bundle).with_context(|| format!("opening {}", a.bundle.display()))?;
    let u = read_unverified(BufReader::new(f))
        .with_context(|| format!("reading {}", a.bundle.display()))?;
    let ids: Vec<String> = u.signatures.iter().map(|s| s.0.to_string()).collect();
    if a.json {
        let out = Output {
            api_version: "abupdate/v1",
            kind: "BundleInfo",
            manifest: &u.manifest,
            signature_key_ids: ids,
            total_size: u.header.total_len,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let m = &u.manifest;
    println!("bundle:      {}", a.bundle.display());
    println!("format:      {}", m.format);
    println!("compatible:  {}", m.compatible);
    println!("version:     {}", m.version);
    println!("build id:    {}", m.build_id);
    println!("created:     {}", m.created);
    println!("kernel args: {}", m.kernel_params);
    match m.verity() {
        Some(v) => println!(
            "dm-verity:   root hash {}, {} data blocks, hash area at byte {} ({} bytes)",
            hex::encode(v.root_hash),
            v.data_blocks,
            v.hash_offset,
            v.hash_area_len()
        ),
        None => println!("dm-verity:   none"),
    }
    println!(
        "signed by:   {} (not verified here)",
        if ids.is_empty() {
            "nobody".into()
        } else {
            ids.join(", ")
        }
    );
    println!("size:        {} bytes", u.header.total_len);
    for p in &m.payloads {
        println!(
            "payload {:<7} {:>12} bytes at {:>10}, {} chunks of {} KiB, sha256 {}",
            p.kind.to_string(),
            p.size,
            p.offset,
            p.chunks.len(),
            p.chunk_size / 1024,
            p.sha256
        );
        if a.chunks {
            for (i, c) in p.chunks.iter().enumerate() {
                println!("  {i:>6} {c}");
            }
        }
    }
    Ok(())
}
