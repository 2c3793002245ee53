//! `abbuild build`: a system -> a deterministic root squashfs -> a signed bundle
//! (`NAME-VERSION.abu`) and a bootable GPT disk image (`NAME-VERSION.img`) whose slot A holds
//! that same squashfs and whose ESP boots it. The steps are described in `docs/builder.md`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use abbundle::layout::{self, Slot, SlotInfo};
use abbundle::{Manifest, SecretKey, Version};
use anyhow::{bail, Context, Result};
use tracing::info;

use crate::bundle::{self, BundleRequest};
use crate::disk::{self, Layout, ESP_LABEL, ROOT_A_LABEL};
use crate::esp::{self, Contents, Source};
use crate::image_def::{BootBackend, ImageDef, Size};
use crate::squashfs::{self, SquashfsOptions};
use crate::{bios, cmd, grub, system, verity};

/// Output format of the disk image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    /// A raw, sparse disk image: `NAME-VERSION.img`.
    #[default]
    Raw,
    /// qcow2, converted from raw by `qemu-img`: `NAME-VERSION.qcow2`.
    Qcow2,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The image definition (`images/NAME.toml`).
    pub image: PathBuf,
    /// The system: a Nix toplevel store path (or a link to one, like `./result`) or a
    /// directory following the toplevel contract of `docs/layout.md`.
    pub system: PathBuf,
    /// The bundle's version (dotted numbers).
    pub version: String,
    /// Secret key files to sign the bundle with (at least one).
    pub keys: Vec<PathBuf>,
    /// Where the bundle and the disk image go (created if missing).
    pub out_dir: PathBuf,
    /// Disk image format.
    pub format: DiskFormat,
    /// The manifest's build id; `None`: the store path for a store path, empty for a directory.
    pub build_id: Option<String>,
    /// Timestamp of everything in the squashfs and on the ESP, and the bundle's creation time.
    /// `None`: `SOURCE_DATE_EPOCH`, else 0 for the images and the current time for the bundle.
    pub epoch: Option<u64>,
    /// Bundle chunk size.
    pub chunk_size: u32,
    /// Bundle format version.
    pub bundle_format: u32,
    /// Threads for mksquashfs (`None`: all cores).
    pub processors: Option<u32>,
}

impl BuildOptions {
    /// Options with the defaults for everything but the required inputs.
    pub fn new(
        image: impl Into<PathBuf>,
        system: impl Into<PathBuf>,
        version: &str,
        key: impl Into<PathBuf>,
        out_dir: impl Into<PathBuf>,
    ) -> BuildOptions {
        BuildOptions {
            image: image.into(),
            system: system.into(),
            version: version.to_string(),
            keys: vec![key.into()],
            out_dir: out_dir.into(),
            format: DiskFormat::Raw,
            build_id: None,
            epoch: None,
            chunk_size: abbundle::DEFAULT_CHUNK_SIZE,
            bundle_format: abbundle::FORMAT_VERSION,
            processors: None,
        }
    }
}

/// What a build wrote.
#[derive(Clone, Debug)]
pub struct BuildOutputs {
    /// The signed bundle, `OUT/NAME-VERSION.abu`.
    pub bundle: PathBuf,
    /// The disk image, `OUT/NAME-VERSION.img` (or `.qcow2`).
    pub image: PathBuf,
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// The image definition used.
    pub image_def: ImageDef,
    /// The disk's partition table (offsets in the raw image).
    pub layout: Layout,
}

/// `SOURCE_DATE_EPOCH`, if set.
fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH '{s}' is not a number")
        })?)),
        Err(_) => Ok(None),
    }
}

/// The size of the boot loader's files, checked to be readable before any work. `grub`: the
/// images of a GRUB backend.
fn loader_len(def: &ImageDef, grub: Option<&grub::Images>) -> Result<u64> {
    match def.boot_backend {
        BootBackend::Grub => Ok(grub.context("GRUB's images were not made")?.esp_len()),
        BootBackend::SystemdBoot => Ok(fs::metadata(&def.bootloader)
            .with_context(|| {
                format!(
                    "bootloader {} (install systemd-boot-efi, set `bootloader` or {})",
                    def.bootloader.display(),
                    crate::image_def::BOOTLOADER_ENV
                )
            })?
            .len()),
    }
}

/// What the ESP holds: slot a's kernel, initrd and info.json in `a/` (the same for every
/// backend), and the backend's loader with its state saying that slot a is good and boots.
fn esp_contents(
    def: &ImageDef,
    grub: Option<&grub::Images>,
    sys: &system::System,
    info_json: Vec<u8>,
    version: &str,
    kernel_params: &str,
) -> Result<Contents> {
    let a = Slot::A.files();
    let slot_files = [
        (a.kernel, Source::Path(sys.kernel.clone())),
        (a.initrd, Source::Path(sys.initrd.clone())),
        (a.info, Source::Bytes(info_json)),
    ];
    match def.boot_backend {
        BootBackend::SystemdBoot => {
            let mut files = vec![
                (
                    layout::BOOT_EFI.into(),
                    Source::Path(def.bootloader.clone()),
                ),
                (
                    layout::LOADER_CONF.into(),
                    Source::Bytes(b"timeout 0\n".to_vec()),
                ),
            ];
            files.extend(slot_files);
            files.push((
                layout::entry_path(&layout::good_entry_name(Slot::A)),
                Source::Bytes(layout::boot_entry(Slot::A, version, kernel_params).into_bytes()),
            ));
            Ok(Contents {
                dirs: layout::systemd_boot_esp_dirs(),
                files,
            })
        }
        BootBackend::Grub => grub::esp_contents(
            grub.context("GRUB's images were not made")?,
            slot_files,
            kernel_params,
        ),
    }
}

/// Builds the bundle and the disk image.
pub fn build(o: &BuildOptions) -> Result<BuildOutputs> {
    let def = ImageDef::load(&o.image)?;
    let version: Version = o.version.parse().map_err(anyhow::Error::msg)?;
    if o.keys.is_empty() {
        bail!("no signing key given");
    }
    // Fail on an unreadable key now, not after minutes of packing.
    for k in &o.keys {
        SecretKey::load(k).with_context(|| format!("reading key {}", k.display()))?;
    }
    // boot-backend = "grub" (grub.rs): GRUB's images, made before any other work.
    let grub_images = grub::images_for(&def)?;
    let bootloader_len = loader_len(&def, grub_images.as_ref())?;
    if o.format == DiskFormat::Qcow2 {
        cmd::require_program("qemu-img", "install qemu-utils, or use --format raw")?;
    }
    let sys = system::resolve(&o.system)?;
    sys.check_updater_config(&def.compatible, def.boot_tries)?;
    let layout = Layout::compute(&def)?;
    let esp_part = layout.partition(ESP_LABEL).clone();
    let slot_a = layout.partition(ROOT_A_LABEL).clone();

    // The ESP holds both slots' kernels and initrds once an update is installed.
    let boot_files = fs::metadata(&sys.kernel)?.len() + fs::metadata(&sys.initrd)?.len();
    let esp_need = bootloader_len + 2 * boot_files + (1 << 20);
    // FAT32's tables and reserved sectors take about 1% at 512-byte clusters.
    if esp_need > esp_part.size / 100 * 98 {
        bail!(
            "esp-size is {}: too small for the bootloader and two slots' kernels and initrds ({})",
            Size(esp_part.size),
            Size(esp_need)
        );
    }

    let env_epoch = source_date_epoch()?;
    let epoch = o.epoch.or(env_epoch);
    let image_epoch = epoch.unwrap_or(0);
    let created = match epoch {
        Some(t) => t,
        None => bundle::creation_time()?,
    };

    fs::create_dir_all(&o.out_dir).with_context(|| format!("creating {}", o.out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".abbuild-")
        .tempdir_in(&o.out_dir)
        .with_context(|| format!("creating a work directory in {}", o.out_dir.display()))?;
    let rootfs = work.path().join("rootfs.squashfs");
    squashfs::make(
        &sys,
        &rootfs,
        &SquashfsOptions {
            compression: def.compression,
            block_size: def.block_size.0,
            epoch: image_epoch,
            processors: o.processors,
        },
    )?;
    let squashfs_len = fs::metadata(&rootfs)?.len();
    info!("root squashfs: {}", Size(squashfs_len));
    // verity (on unless the image says otherwise): the slot's payload is image + hash area.
    let verity = match def.verity {
        true => Some(verity::append_tree(&rootfs)?),
        false => None,
    };
    let rootfs_len = fs::metadata(&rootfs)?.len();
    if rootfs_len > slot_a.size {
        bail!(
            "the root filesystem does not fit the slot: the squashfs is {}{}, slot-size of image {} is {}",
            Size(squashfs_len),
            match verity {
                Some(_) => format!(" and its dm-verity hash area {}", Size(rootfs_len - squashfs_len)),
                None => String::new(),
            },
            def.name,
            Size(slot_a.size)
        );
    }

    let mut params: Vec<&str> = sys.kernel_params.split_whitespace().collect();
    // An image parameter the system already has (say console=ttyS0) is not repeated.
    for p in &def.kernel_params {
        if !params.contains(&p.as_str()) {
            params.push(p);
        }
    }
    if let Some(p) = params
        .iter()
        .find(|p| p.starts_with(abbundle::verity::PARAM))
    {
        bail!(
            "the system's kernel-params carry '{p}': {} is abbuild's, made from the image",
            abbundle::verity::PARAM
        );
    }
    let verity_param = verity.map(|v| v.param());
    params.extend(verity_param.as_deref());
    let kernel_params = params.join(" ");
    layout::check_kernel_params(&kernel_params).map_err(|e| {
        anyhow::anyhow!(
            "{e} (from the system's kernel-params or kernel-params in image {})",
            def.name
        )
    })?;
    grub::check_kernel_params(&def, &kernel_params)?;
    layout::check_kernel_cmdline_len(&kernel_params).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the system's kernel-params and kernel-params in image {})",
            def.name
        )
    })?;
    let build_id = match (&o.build_id, &sys.kind) {
        (Some(id), _) => id.clone(),
        (None, system::SystemKind::StorePath { .. }) => sys.path.to_string_lossy().into_owned(),
        (None, system::SystemKind::Directory) => String::new(),
    };

    let stem = format!("{}-{}", def.name, version);
    let bundle_path = o.out_dir.join(format!("{stem}.abu"));
    // Both outputs are made in the work directory and renamed into place at the end, so a
    // failed build leaves neither.
    let bundle_tmp = work.path().join("bundle.abu");
    info!("writing the bundle");
    let manifest = bundle::make(&BundleRequest {
        rootfs: &rootfs,
        kernel: &sys.kernel,
        initrd: &sys.initrd,
        kernel_params: kernel_params.clone(),
        compatible: def.compatible.clone(),
        version: version.clone(),
        build_id: build_id.clone(),
        keys: &o.keys,
        chunk_size: o.chunk_size,
        format: o.bundle_format,
        created: Some(created),
        out: &bundle_tmp,
    })?;

    let info_json = serde_json::to_vec_pretty(&SlotInfo::of(&manifest))?;
    let contents = esp_contents(
        &def,
        grub_images.as_ref(),
        &sys,
        info_json,
        version.as_str(),
        &kernel_params,
    )?;

    let raw_path = o.out_dir.join(format!("{stem}.img"));
    let raw_tmp = work.path().join("disk.img");
    info!("writing the disk image");
    let root_index = root_index(&bundle_tmp, &manifest)?;
    write_disk(
        &raw_tmp,
        &layout,
        &rootfs,
        root_index.as_ref().map(|e| (&manifest, e.as_slice())),
        &contents,
        image_epoch,
        grub_images.as_ref(),
    )?;
    let image = match o.format {
        DiskFormat::Raw => {
            fs::rename(&raw_tmp, &raw_path)
                .with_context(|| format!("renaming to {}", raw_path.display()))?;
            raw_path
        }
        DiskFormat::Qcow2 => {
            let out = o.out_dir.join(format!("{stem}.qcow2"));
            let tmp = work.path().join("disk.qcow2");
            cmd::run(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw_tmp)
                    .arg(&tmp),
                None,
            )
            .context("converting the disk image to qcow2")?;
            fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
            out
        }
    };
    fs::rename(&bundle_tmp, &bundle_path)
        .with_context(|| format!("renaming to {}", bundle_path.display()))?;
    info!("wrote {}", bundle_path.display());
    info!("wrote {} ({})", image.display(), disk::describe(&layout));
    Ok(BuildOutputs {
        bundle: bundle_path,
        image,
        manifest,
        image_def: def,
        layout,
    })
}

/// `abbuild rootfs`: only the root squashfs.
pub fn run_rootfs(a: &crate::cli::RootfsArgs) -> Result<()> {
    let def = ImageDef::load(&a.image)?;
    let sys = system::resolve(&a.system)?;
    let opts = SquashfsOptions {
        compression: def.compression,
        block_size: def.block_size.0,
        epoch: source_date_epoch()?.unwrap_or(0),
        processors: a.processors,
    };
    squashfs::make(&sys, &a.out, &opts)?;
    info!(
        "wrote {} ({})",
        a.out.display(),
        Size(fs::metadata(&a.out)?.len())
    );
    Ok(())
}

/// `abbuild build`.
pub fn run_cli(a: &crate::cli::BuildArgs) -> Result<()> {
    let out = build(&BuildOptions {
        image: a.image.clone(),
        system: a.system.clone(),
        version: a.version.clone(),
        keys: a.key.clone(),
        out_dir: a.out_dir.clone(),
        format: a.format,
        build_id: a.build_id.clone(),
        epoch: None,
        chunk_size: a.chunk_size,
        bundle_format: a.bundle_format,
        processors: a.processors,
    })?;
    println!("{}", out.bundle.display());
    println!("{}", out.image.display());
    Ok(())
}

/// The root payload's entries of a format 2 bundle's chunk index (read back from the bundle
/// just written, checked against the manifest's digest); `None` for format 1.
fn root_index(bundle: &Path, m: &Manifest) -> Result<Option<Vec<abbundle::index::Entry>>> {
    let Some(r) = &m.chunk_index else {
        return Ok(None);
    };
    let mut bytes = vec![0u8; r.size as usize];
    let f = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut bytes, r.offset)
        .with_context(|| format!("reading the chunk index of {}", bundle.display()))?;
    if <sha2::Sha256 as sha2::Digest>::digest(&bytes)[..] != r.sha256.0 {
        bail!(
            "the chunk index of {} does not match its manifest",
            bundle.display()
        );
    }
    let sizes: Vec<u64> = m.payloads.iter().map(|p| p.size).collect();
    let mut index = abbundle::ChunkIndex::decode(&bytes, r, &sizes)?;
    Ok(Some(index.payloads.swap_remove(0)))
}

/// Writes the raw disk image: table, slot A (and, for a format 2 bundle, the root's seed index
/// after it: `abbundle::slot_index`), ESP. The rest stays sparse zeros.
fn write_disk(
    path: &Path,
    layout: &Layout,
    rootfs: &Path,
    root_index: Option<(&Manifest, &[abbundle::index::Entry])>,
    contents: &Contents,
    epoch: u64,
    grub: Option<&grub::Images>,
) -> Result<()> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(layout.disk_size)
        .with_context(|| format!("sizing {}", path.display()))?;
    disk::write_table(&mut f, layout)
        .with_context(|| format!("writing the partition table of {}", path.display()))?;
    let slot = layout.partition(ROOT_A_LABEL);
    f.seek(SeekFrom::Start(slot.offset))?;
    let mut src = File::open(rootfs).with_context(|| format!("opening {}", rootfs.display()))?;
    copy_sparse(&mut src, &mut f).with_context(|| {
        format!(
            "copying the root squashfs into slot A of {}",
            path.display()
        )
    })?;
    if let Some((m, entries)) = root_index {
        let root = m.payload(abbundle::PayloadKind::Rootfs);
        if abbundle::slot_index::fits(root.size, entries.len() as u64, slot.size) {
            abbundle::slot_index::write(root.size, &root.sha256, entries, |at, b| {
                std::os::unix::fs::FileExt::write_all_at(&f, b, slot.offset + at)
            })
            .with_context(|| format!("writing slot A's seed index in {}", path.display()))?;
        } else {
            info!("slot A has no room for the seed index after the root image");
        }
    }
    let esp_part = layout.partition(ESP_LABEL);
    let volume_id = u32::from_le_bytes(esp_part.uuid.as_bytes()[..4].try_into().unwrap());
    esp::write(&f, esp_part, volume_id, epoch, contents).context("writing the ESP")?;
    // boot-backend = "grub": core.img and boot.img for BIOS (bios.rs).
    if let Some(g) = grub {
        bios::install(&f, layout, &g.core, &g.boot)?;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Copies `src` to the current position of `dst`, seeking over all-zero blocks so the image
/// stays sparse (the file's fresh region reads as zeros anyway).
fn copy_sparse(src: &mut File, dst: &mut File) -> io::Result<()> {
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; 16 * BLOCK];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for block in buf[..n].chunks(BLOCK) {
            if block.iter().all(|b| *b == 0) {
                dst.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                dst.write_all(block)?;
            }
        }
    }
}
