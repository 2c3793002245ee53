//! `abupdate apply`: orchestration only. The order of the steps is what makes a power cut at
//! any moment leave a machine that boots a complete system (docs/updater.md):
//!
//! 0. check everything that can be checked without writing: lock, disk, target slot, the
//!    bundle's signature, compatible string, version and size;
//! 1. make the target slot unbootable (the boot loader's record of it goes; sync): from here
//!    on the slot cannot boot;
//! 2. stream the root image into the target partition, each chunk verified against the
//!    signed manifest before it is written; sync; read it back from the device and check
//!    every chunk again;
//! 3. write kernel, initrd and info.json to `X/` on the ESP (sync, read back, check);
//! 4. let the target boot next with N tries (the loader's record, with the bundle's version;
//!    sync, read back). Only now can the new slot boot.
//!
//! The boot loader is reached only through `boot::BootLoader`; this file names none.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use abbundle::{BundleReader, Manifest, Payload, PayloadKind, Version};
use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::boot::slots;
use crate::boot::{self, BootLoader, Slot, SlotInfo, SlotState, SlotView, View};
use crate::codes;
use crate::disk::esp::Esp;
use crate::disk::fatsweep;
use crate::disk::{Disk, Partition};
use crate::fetch::ranged::{Fetch, FileSource};
use crate::install::pipeline::{self, Check};
use crate::install::{chunks, delta, stream};
use crate::progress::Progress;
use crate::state::lock;
use crate::state::Context as Ctx;
use crate::{fault, fetch, refuse};

/// A bundle being read from its source.
type Bundle = BundleReader<Box<dyn Read + Send>>;

/// What `apply` was asked to do.
pub struct Request<'a> {
    pub source: &'a str,
    pub allow_downgrade: bool,
    pub slot: Option<Slot>,
    pub reboot: bool,
    /// `update`: the SHA-256 of the manifest the channel file pins; any other bundle, even
    /// one validly signed, is refused before anything is written.
    pub expect_manifest_sha256: Option<abbundle::Digest>,
    /// `update`: the version the channel file states; a bundle with another version in its
    /// manifest is refused before anything is written.
    pub expect_version: Option<&'a Version>,
    /// Print the plan (`delta::Plan`) after every check, and change nothing.
    pub dry_run: bool,
    /// With `dry_run`: as JSON.
    pub json: bool,
    /// Read the whole bundle as a stream: no seed scan, no delta (`apply --full`).
    pub full: bool,
}

pub fn run(ctx: &Ctx, r: &Request) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, running) = slots::open(ctx.disk.as_deref(), false)?;
    let mut esp = Esp::open(&disk)?;
    let loader = boot::detect(&esp);
    // A loader state it cannot read or change is the disk's fault (36), not a missing slot.
    loader.check_state(&esp)?;
    let view = loader.view(&esp)?;
    let (target, part) = choose_target(r, &disk, &esp, &*loader, &view, running)?;
    let keep = target.other();
    let kv = view.slot(keep);
    let (reader, front_ranges) = open_bundle(ctx, r)?;
    let m = reader.manifest();
    let version = m.version.clone();
    let rootfs = m.payload(PayloadKind::Rootfs).clone();
    let kernel = m.payload(PayloadKind::Kernel).clone();
    let initrd = m.payload(PayloadKind::Initrd).clone();
    let info = SlotInfo::of(m);
    let kernel_params = m.kernel_params.clone();
    let verity = m.verity();
    loader.check_install(&esp, target, version.as_str(), &kernel_params)?;
    check_fits(r, &version, kv, &rootfs, target, &part)?;
    let info_json = serde_json::to_vec_pretty(&info)?;
    let lost = fatsweep::find(&disk)?;
    check_esp_space(
        &esp,
        &*loader,
        target,
        [kernel.size, initrd.size, info_json.len() as u64],
        &lost,
    )?;
    let (maps, plan) = plan(r, &disk, &esp, target, kv, &reader)?;
    if r.dry_run {
        if r.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", plan.text());
        }
        return Ok(());
    }
    let local = !(r.source.starts_with("http://") || r.source.starts_with("https://"));
    let file = match maps.as_ref().filter(|_| plan.mode == "delta" && local) {
        Some(_) => {
            Some(std::fs::File::open(r.source).with_context(|| format!("opening {}", r.source))?)
        }
        None => None,
    };
    let fetch = open_fetch(r, m, maps.as_deref(), &plan, file.as_ref(), front_ranges)?;
    let maps = maps.filter(|_| fetch.is_some());
    info!(
        "installing version {version} ({}) into slot {target} on {}, signed by {}",
        if info.build_id.is_empty() {
            "no build id"
        } else {
            &info.build_id
        },
        disk.path.display(),
        reader.signed_by()
    );

    // From here on the disk changes. A failure leaves the running slot and its entry as they
    // were; the target slot has no entry and cannot boot.
    if !lost.is_empty() {
        // Clusters an interrupted write left allocated go back first (outside the FAT
        // driver, so it is closed meanwhile and counts the free clusters afresh).
        esp.close()?;
        fatsweep::free(&disk, &lost)?;
        esp = Esp::open(&disk)?;
    }
    let source = match (&maps, fetch) {
        (Some(maps), Some(fetch)) => Source::Plan { maps, fetch },
        _ => Source::Stream(Box::new(reader)),
    };
    let written = write_slot(
        ctx,
        &disk,
        &esp,
        &*loader,
        &part,
        target,
        source,
        [&rootfs, &kernel, &initrd],
        verity.as_ref(),
        &info_json,
    )
    .and_then(|()| {
        loader.boot_next(
            &esp,
            target,
            ctx.config.boot_tries,
            version.as_str(),
            &kernel_params,
        )
    });
    if let Err(e) = written {
        remove_boot_files(esp, target);
        return Err(e.context(format!(
            "installing into slot {target} failed: slot {target} has no boot entry and will not boot; \
             the running system and its boot entry are untouched"
        )));
    }

    keep_fallback_after_downgrade(&*loader, &esp, target)?;
    esp.close()?;

    check_boots_next(&*loader, &disk.path, target)?;
    fault::report();
    println!(
        "installed version {version} into slot {target}; it boots next with {} tries; \
         run 'abupdate mark-good' once it is up",
        ctx.config.boot_tries
    );
    if r.reboot {
        reboot()?;
    }
    Ok(())
}

/// Format 2: which chunks the device already holds (reads the seeds, writes nothing), and the
/// plan that follows: per payload, what is in place, copied from a seed or read from the bundle.
fn plan<'b>(
    r: &Request,
    disk: &Disk,
    esp: &Esp,
    target: Slot,
    kv: &SlotView,
    reader: &'b Bundle,
) -> Result<(Option<Vec<delta::SeedMap<'b>>>, delta::Plan)> {
    let m = reader.manifest();
    let seeded = match reader.index() {
        Some(index) if !r.full => Some(delta::find_seeds(
            disk,
            esp,
            target,
            kv.info.as_ref(),
            m,
            index,
        )?),
        _ => None,
    };
    let (maps, seeds) = seeded.unzip();
    let h = reader.header();
    let mut plan = delta::Plan::new(
        m,
        reader.index().filter(|_| !r.full),
        maps.as_deref().unwrap_or(&[]),
        h.index_end(),
        h.total_len,
        target.name(),
        seeds.unwrap_or_default(),
    );
    if r.full {
        plan.reason = "asked for with --full";
    }
    Ok((maps, plan))
}

/// Where a delta apply reads the bundle's chunks: the file, or the HTTP(S) ranges (the first
/// planned range is asked for now, before anything is written: a 200 there is read as the whole
/// bundle). `None`: the full stream.
fn open_fetch<'f>(
    r: &Request<'f>,
    m: &Manifest,
    maps: Option<&[delta::SeedMap]>,
    plan: &delta::Plan,
    file: Option<&'f File>,
    front_ranges: Option<fetch::HttpRanges>,
) -> Result<Option<Box<dyn Fetch + 'f>>> {
    let fetch: Option<Box<dyn Fetch + 'f>> = match (file, maps) {
        (Some(f), _) => Some(Box::new(FileSource {
            file: f,
            name: r.source,
        })),
        (None, Some(maps)) if plan.mode == "delta" => {
            let f = http_fetch(front_ranges.clone(), m, maps)?;
            if f.is_none() {
                info!("the server does not answer range requests: reading the whole bundle");
            }
            f
        }
        _ => None,
    };
    // The full stream over HTTP(S): the rest of the bundle is asked for now too, so that a
    // server that answers it badly changes nothing.
    if let Some(mut ranges) = front_ranges.filter(|_| fetch.is_none()) {
        ranges.prepare_rest()?;
    }
    Ok(fetch)
}

/// A downgrade (or reinstall) has a version no newer than the other slot's, so the loader
/// may keep booting the other slot: list that one after the target, as the fallback (a good
/// slot stays good; it boots if the new one fails).
fn keep_fallback_after_downgrade(loader: &dyn BootLoader, esp: &Esp, target: Slot) -> Result<()> {
    let after = loader.view(esp)?;
    if after.next_slot() != Some(target) {
        let other = target.other();
        warn!("slot {target} has an older or equal version than slot {other}: slot {other} boots only if slot {target} does not come up");
        loader.keep_as_fallback(esp, other)?;
    }
    Ok(())
}

/// `--reboot`: into the new slot, once it is installed.
fn reboot() -> Result<()> {
    info!("rebooting");
    let status = std::process::Command::new("reboot")
        .status()
        .context("running reboot")?;
    if !status.success() {
        anyhow::bail!("reboot failed: {status}");
    }
    Ok(())
}

/// Step 0, the disk: the slot to write (`--slot`, else the one not running or not booting
/// next), refused if it runs or is in use, or if the disk would keep no slot to fall back to.
fn choose_target(
    r: &Request,
    disk: &Disk,
    esp: &Esp,
    loader: &dyn BootLoader,
    view: &View,
    running: Option<Slot>,
) -> Result<(Slot, Partition)> {
    // Not booted from this disk: the slot that would boot next stands in for the running one.
    let active = running.or(view.next_slot());
    let target = r
        .slot
        .unwrap_or_else(|| active.map(Slot::other).unwrap_or(Slot::B));
    if Some(target) == running {
        refuse!(
            codes::TARGET_RUNNING,
            "slot {target} is the running slot; an update goes into the other one; nothing was changed"
        );
    }
    let part = disk.partition(target.partition_label())?.clone();
    if disk.is_block_device {
        if let Some(user) = slots::partition_in_use(&disk.path, part.number) {
            refuse!(
                codes::TARGET_RUNNING,
                "slot {target}'s partition is in use: {user}; nothing was changed"
            );
        }
    }
    // The slot that stays as the fallback while the new one is tried. Whichever slot is
    // replaced, and whether or not this disk is the booted one, the disk must keep a slot that
    // boots, and a good one if it has one now (the target loses its entry at step 1).
    let keep = target.other();
    let (kv, tv) = (view.slot(keep), view.slot(target));
    if tv.state == SlotState::Good && kv.state != SlotState::Good {
        refuse!(
            codes::NO_FALLBACK,
            "slot {target} is the only good slot and slot {keep} is {}; {}; nothing was changed",
            kv.state.name(),
            if running == Some(keep) {
                "run 'abupdate mark-good' first"
            } else {
                "an install there would leave no good slot to fall back to"
            }
        );
    }
    if !loader.bootable(esp, keep)? {
        refuse!(
            codes::NO_FALLBACK,
            "slot {keep}{} has no boot entry that can boot ({}), so slot {target} would have nothing to fall back to; \
             nothing was changed",
            if running == Some(keep) { ", the running slot," } else { "" },
            kv.state.name()
        );
    }
    Ok((target, part))
}

/// Step 0, the bundle: opened from its source and checked before anything is written: its
/// signature by a trusted key, the channel's pins (`update`), the compatible string.
fn open_bundle(ctx: &Ctx, r: &Request) -> Result<(Bundle, Option<fetch::HttpRanges>)> {
    let compatible = ctx.compatible()?;
    let keys = ctx.trusted_keys()?;

    let (stream, front_ranges) = fetch::open_source(r.source, &ctx.config)?;
    let reader =
        BundleReader::open(stream, &keys).with_context(|| format!("verifying {}", r.source))?;
    if let Some(want) = r.expect_manifest_sha256 {
        if reader.manifest_sha256() != want {
            refuse!(
                codes::CHANNEL_DIGEST_MISMATCH,
                "{}: the bundle's manifest digest is {}, the channel file names {want}: not the \
                 bundle that was published; nothing was changed",
                fetch::redact(r.source),
                reader.manifest_sha256()
            );
        }
    }
    reader.check_compatible(compatible)?;
    let m = reader.manifest();
    if let Some(want) = r.expect_version.filter(|&w| *w != m.version) {
        refuse!(
            codes::CHANNEL_VERSION_MISMATCH,
            "{}: the bundle's version is {}, the channel file says {want}: a broken publication; \
             nothing was changed",
            fetch::redact(r.source),
            m.version
        );
    }
    Ok((reader, front_ranges))
}

/// Step 0, bundle against disk: not older than the slot that stays (unless
/// `--allow-downgrade`), and the root image fits the target partition.
fn check_fits(
    r: &Request,
    version: &Version,
    kv: &SlotView,
    rootfs: &Payload,
    target: Slot,
    part: &Partition,
) -> Result<()> {
    let keep = target.other();
    // Compared with the slot that stays: the newer version boots, so an older bundle would not
    // boot next without demoting that slot (what --allow-downgrade does).
    if let Some(installed) = kv.version.as_deref() {
        if !r.allow_downgrade {
            match installed.parse::<Version>() {
                Ok(installed) if *version <= installed => refuse!(
                    codes::DOWNGRADE_REFUSED,
                    "bundle version {version} is not newer than {installed} in slot {keep}; \
                     use --allow-downgrade to install it anyway; nothing was changed"
                ),
                Ok(_) => {}
                Err(_) => refuse!(
                    codes::DOWNGRADE_REFUSED,
                    "slot {keep} holds version '{installed}', which cannot be compared with {version}; \
                     use --allow-downgrade to install it anyway; nothing was changed"
                ),
            }
        }
    }
    if rootfs.size > part.len {
        refuse!(
            codes::PAYLOAD_TOO_LARGE,
            "the root image ({} bytes) does not fit slot {target} (partition {}, {} bytes); nothing was changed",
            rootfs.size,
            part.label,
            part.len
        );
    }
    Ok(())
}

/// After a failed install: the target's boot files go, so a failed write (say, a full ESP)
/// keeps no clusters, and the file system is closed cleanly (FSInfo, no dirty flag). An ESP
/// that holds none of them is left as it is, byte for byte.
fn remove_boot_files(esp: Esp, target: Slot) {
    let files = target.files();
    let removed = if files.all().iter().any(|p| esp.exists(p)) {
        files
            .all()
            .iter()
            .try_for_each(|p| esp.remove(p))
            .and_then(|()| esp.close())
    } else {
        Ok(())
    };
    if let Err(re) = removed {
        warn!("could not remove slot {target}'s boot files after the failure: {re:#}");
    }
}

/// Step 4's proof: the disk opened afresh, the loader boots the target next.
fn check_boots_next(loader: &dyn BootLoader, path: &Path, target: Slot) -> Result<()> {
    let disk = Disk::open(path, true)?;
    let esp = Esp::open(&disk)?;
    let after = loader.view(&esp)?;
    if after.next_slot() != Some(target) {
        anyhow::bail!(
            "slot {target} was installed but {} would not boot it next (bug)",
            loader.name()
        );
    }
    Ok(())
}

/// Where the pipeline takes the new slot's bytes from.
enum Source<'b, 'f> {
    /// The bundle as one stream, every chunk of it.
    Stream(Box<Bundle>),
    /// A plan: each chunk in place, from a seed, or read from the bundle by `fetch`.
    Plan {
        maps: &'b [delta::SeedMap<'b>],
        fetch: Box<dyn Fetch + 'f>,
    },
}

/// Steps 1 to 3: make the slot unbootable, write and check it and its boot files through the
/// one pipeline (`pipeline::run`; its read-back also checks the slot's dm-verity tree against
/// the signed root hash, exit 46), then the boot files read back and info.json.
#[allow(clippy::too_many_arguments)]
fn write_slot(
    ctx: &Ctx,
    disk: &Disk,
    esp: &Esp,
    loader: &dyn BootLoader,
    part: &Partition,
    target: Slot,
    source: Source,
    payloads: [&Payload; 3],
    verity: Option<&abbundle::verity::Verity>,
    info_json: &[u8],
) -> Result<()> {
    let [rootfs, kernel, initrd] = payloads;
    loader.make_unbootable(esp, target)?;
    // The slot is rewritten: a record of its old contents found damaged goes (even for the same
    // image again: the repair), so status and mark-corrupt of the other slot no longer count it.
    let files = target.files();
    if esp.exists(&files.corrupt) {
        esp.remove(&files.corrupt)?;
        esp.sync()?;
    }
    let index = match &source {
        Source::Stream(reader) => reader.index().map(|i| &i.payloads[0][..]),
        Source::Plan { maps, .. } => Some(maps[0].entries()),
    };
    if let Some(entries) = index {
        delta::store_index(disk, part, rootfs, entries)?;
    }
    let targets = pipeline::Targets {
        disk,
        part,
        esp,
        kernel_path: &files.kernel,
        initrd_path: &files.initrd,
        verity,
    };
    // The same progress and log lines for every source: scripts and tests watch for them.
    let progress = Progress::new(&format!("slot {target}"), rootfs.size, ctx.quiet);
    match source {
        Source::Stream(reader) => {
            pipeline::run(&targets, payloads, Check::Written, progress, move |sink| {
                stream::produce(*reader, sink)
            })?;
            info!("slot {target}: {} bytes written and read back", rootfs.size);
        }
        Source::Plan { maps, mut fetch } => {
            let keep = target.other().files();
            // Missing or unreadable seed files: their chunks come from the bundle.
            let runs = |path: &str| esp.file_runs(path).unwrap_or_default();
            let seeds = chunks::Seeds {
                disk,
                keep: disk.partition(target.other().partition_label())?,
                esp: disk.partition(abbundle::layout::ESP_LABEL)?,
                kernel: runs(&keep.kernel),
                initrd: runs(&keep.initrd),
            };
            let jobs = [(rootfs, &maps[0]), (kernel, &maps[1]), (initrd, &maps[2])];
            let check = Check::Table(maps[0].entries());
            let t = pipeline::run(&targets, payloads, check, progress, |sink| {
                chunks::produce(jobs, &seeds, fetch.as_mut(), sink)
            })?;
            info!("slot {target}: {} bytes written and read back", rootfs.size);
            info!(
                "delta: {} bytes read from the bundle, {} copied from seeds, {} already in place",
                t.fetched, t.copied, t.in_place
            );
        }
    }
    check_boot_files(esp, target, kernel, initrd, info_json)
}

/// The HTTP(S) range source for a plan, on the client that read the front: the plan's ranges
/// fetched ahead, the first one asked for now, before anything is written (a 200 there is the
/// whole bundle, read from then on). `None` when the front came whole (the server ignores
/// Range; then the full stream).
#[cfg(feature = "http")]
fn http_fetch(
    ranges: Option<fetch::HttpRanges>,
    m: &abbundle::Manifest,
    maps: &[delta::SeedMap],
) -> Result<Option<Box<dyn Fetch>>> {
    use fetch::ranged::{Ahead, Sequential};
    use fetch::RangeReply;
    let Some(mut ranges) = ranges else {
        return Ok(None);
    };
    let plan: Vec<(u64, u64)> = m
        .payloads
        .iter()
        .zip(maps)
        .flat_map(|(p, map)| delta::ranges(p, map))
        .map(|r| (r.start, r.end))
        .collect();
    let Some(&(start, end)) = plan.first() else {
        return Ok(Some(Box::new(Ahead::new(ranges, plan, None))));
    };
    Ok(Some(match ranges.get(start, end)? {
        RangeReply::Partial(mut body) => {
            let mut first = vec![0u8; (end - start) as usize];
            body.read_exact(&mut first).map_err(fetch::ranged::short)?;
            Box::new(Ahead::new(ranges, plan, Some(first)))
        }
        whole @ RangeReply::Whole(_) => Box::new(Sequential::new(ranges, plan, Some(whole))),
    }))
}

#[cfg(not(feature = "http"))]
fn http_fetch(
    _: Option<fetch::HttpRanges>,
    _: &abbundle::Manifest,
    _: &[delta::SeedMap],
) -> Result<Option<Box<dyn Fetch>>> {
    Ok(None)
}

/// Step 3's end: the boot files read back as the signed payloads (after a sync and with the
/// cache dropped), then info.json written and read back.
fn check_boot_files(
    esp: &Esp,
    target: Slot,
    kernel: &Payload,
    initrd: &Payload,
    info_json: &[u8],
) -> Result<()> {
    let files = target.files();
    let (kernel_path, initrd_path) = (&files.kernel, &files.initrd);
    esp.sync()?;
    esp.drop_cache()?;
    for (path, p) in [(kernel_path, kernel), (initrd_path, initrd)] {
        let (hash, len) = esp.hash_file(path)?;
        if hash != p.sha256.0 || len != p.size {
            refuse!(
                codes::READBACK_MISMATCH,
                "{path} on the ESP does not read back as written"
            );
        }
    }
    let info_path = &files.info;
    esp.write_file(info_path, info_json)?;
    esp.sync()?;
    if esp.read_small(info_path)?.as_deref() != Some(info_json) {
        refuse!(
            codes::READBACK_MISMATCH,
            "{info_path} on the ESP does not read back as written"
        );
    }
    info!("slot {target}: kernel, initrd and info.json written to the ESP");
    Ok(())
}

/// Refuses (before anything is written) unless the target's new boot files (`sizes`: kernel,
/// initrd, info.json) and the loader's record fit on the ESP, counting what replacing the
/// target's old files and records and giving back `lost` clusters frees.
fn check_esp_space(
    esp: &Esp,
    loader: &dyn BootLoader,
    target: Slot,
    sizes: [u64; 3],
    lost: &fatsweep::Lost,
) -> Result<()> {
    let (cluster, free) = esp.space()?;
    let clusters = |len: u64| len.div_ceil(cluster);
    let files = target.files();
    let mut freed = lost.clusters();
    for p in files.all() {
        freed += clusters(esp.file_len(p)?);
    }
    let records = loader.record_space(esp, target)?;
    for len in records.removed {
        freed += clusters(len);
    }
    // The loader's new records, a directory that may have to be made, and one cluster for a
    // directory that grows by an entry.
    let missing_dir = u64::from(!esp.dir_exists(target.name()));
    let need = sizes.iter().map(|&s| clusters(s)).sum::<u64>() + records.created + missing_dir + 1;
    if need > free + freed {
        refuse!(
            codes::ESP_FULL,
            "slot {target}'s kernel, initrd and boot entry need {} KiB on the ESP, which has {} KiB \
             free counting slot {target}'s old files; nothing was changed",
            need * cluster / 1024,
            (free + freed) * cluster / 1024
        );
    }
    Ok(())
}
