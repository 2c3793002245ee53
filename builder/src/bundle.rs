//! Writing a signed bundle from payload files: the code behind `abbuild bundle`, also
//! called by `abbuild build`.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use abbundle::{
    write_bundle, BundleInput, Manifest, PayloadInput, PayloadKind, SecretKey, Signer, Version,
};
use anyhow::{Context, Result};
use tracing::info;

use crate::cli::BundleArgs;

/// Everything needed to write one bundle.
pub struct BundleRequest<'a> {
    pub rootfs: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub kernel_params: String,
    pub compatible: String,
    pub version: Version,
    pub build_id: String,
    pub keys: &'a [PathBuf],
    pub chunk_size: u32,
    /// Bundle format version (`abbundle::FORMAT_VERSION` or `abbundle::FORMAT_V1`).
    pub format: u32,
    /// Creation time recorded in the manifest; `None`: [`creation_time`].
    pub created: Option<u64>,
    pub out: &'a Path,
}

pub fn run(a: &BundleArgs) -> Result<()> {
    let version: Version = a.version.parse().map_err(anyhow::Error::msg)?;
    abbundle::layout::check_kernel_cmdline_len(&a.kernel_params)
        .map_err(|e| anyhow::anyhow!("--kernel-params: {e}"))?;
    let m = make(&BundleRequest {
        rootfs: &a.rootfs,
        kernel: &a.kernel,
        initrd: &a.initrd,
        kernel_params: a.kernel_params.clone(),
        compatible: a.compatible.clone(),
        version,
        build_id: a.build_id.clone(),
        keys: &a.key,
        chunk_size: a.chunk_size,
        format: a.bundle_format,
        created: None,
        out: &a.out,
    })?;
    info!(
        "wrote {} (version {}, rootfs {} bytes)",
        a.out.display(),
        m.version,
        m.payload(PayloadKind::Rootfs).size
    );
    Ok(())
}

/// The creation time recorded in bundles: SOURCE_DATE_EPOCH if set (reproducible builds),
/// else now.
pub fn creation_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH '{s}' is not a number")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
    }
}

/// Writes the bundle to a temporary file beside `out` and renames it into place, so a
/// failed build never leaves a half-written bundle under the final name.
pub fn make(r: &BundleRequest) -> Result<Manifest> {
    let keys = r
        .keys
        .iter()
        .map(|p| SecretKey::load(p).with_context(|| format!("reading key {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let signers: Vec<&dyn Signer> = keys.iter().map(|k| k as &dyn Signer).collect();
    // A root hash that does not match its image is refused before anything is signed.
    crate::verity::check_payload(r.rootfs, &r.kernel_params)?;
    let open = |p: &Path| {
        let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        if f.metadata()?.len() == 0 {
            anyhow::bail!("{} is empty", p.display());
        }
        Ok(f)
    };
    let (mut rootfs, mut kernel, mut initrd) = (open(r.rootfs)?, open(r.kernel)?, open(r.initrd)?);
    let input = BundleInput {
        compatible: r.compatible.clone(),
        version: r.version.clone(),
        build_id: r.build_id.clone(),
        created: match r.created {
            Some(t) => t,
            None => creation_time()?,
        },
        kernel_params: r.kernel_params.clone(),
        chunk_size: r.chunk_size,
        format: r.format,
    };
    let tmp = tmp_path(r.out);
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut payloads = [
        PayloadInput {
            kind: PayloadKind::Rootfs,
            source: &mut rootfs,
        },
        PayloadInput {
            kind: PayloadKind::Kernel,
            source: &mut kernel,
        },
        PayloadInput {
            kind: PayloadKind::Initrd,
            source: &mut initrd,
        },
    ];
    let result = write_bundle(
        BufWriter::with_capacity(1 << 20, &out),
        &input,
        &mut payloads,
        &signers,
    )
    .with_context(|| format!("writing bundle {}", r.out.display()))
    .and_then(|m| {
        out.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, r.out).with_context(|| format!("renaming to {}", r.out.display()))?;
        Ok(m)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    out.with_file_name(name)
}
