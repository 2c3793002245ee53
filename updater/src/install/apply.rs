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
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;

use abbundle::{BundleReader, ChunkInfo, Manifest, Payload, PayloadKind, Version};
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_128;

use crate::boot::slots;
use crate::boot::{self, BootLoader, Slot, SlotInfo, SlotState, SlotView, View};
use crate::codes;
use crate::disk::direct::AlignedBuf;
use crate::disk::esp::{Esp, EspFile};
use crate::disk::fatsweep;
use crate::disk::{Disk, Partition};
use crate::install::{delta, delta_apply, verity};
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
    let mut fetch = open_fetch(r, m, maps.as_deref(), &plan, file.as_ref(), front_ranges)?;
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
    let written = match (&maps, fetch.as_mut()) {
        (Some(maps), Some(src)) => write_slot_delta(
            ctx,
            &disk,
            &esp,
            &*loader,
            &part,
            target,
            maps,
            src.as_mut(),
            [&rootfs, &kernel, &initrd],
            &info_json,
        ),
        _ => write_slot(
            ctx,
            &disk,
            &esp,
            &*loader,
            &part,
            target,
            reader,
            [&rootfs, &kernel, &initrd],
            &info_json,
        ),
    }
    // Both ways of writing end here: the slot read back as signed; now the signed root hash.
    .and_then(|()| verity::check_slot(&disk, &part, verity.as_ref()))
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
) -> Result<Option<Box<dyn delta_apply::Fetch + 'f>>> {
    let fetch: Option<Box<dyn delta_apply::Fetch + 'f>> = match (file, maps) {
        (Some(f), _) => Some(Box::new(delta_apply::FileSource {
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

/// Steps 1 to 3: make the slot unbootable, write and check it, write and check its boot files.
#[allow(clippy::too_many_arguments)]
fn write_slot(
    ctx: &Ctx,
    disk: &Disk,
    esp: &Esp,
    loader: &dyn BootLoader,
    part: &Partition,
    target: Slot,
    reader: BundleReader<Box<dyn std::io::Read + Send>>,
    [rootfs, kernel, initrd]: [&Payload; 3],
    info_json: &[u8],
) -> Result<()> {
    loader.make_unbootable(esp, target)?;
    if let Some(index) = reader.index() {
        delta::store_index(disk, part, rootfs, &index.payloads[0])?;
    }

    let files = target.files();
    let progress = Progress::new(&format!("slot {target}"), rootfs.size, ctx.quiet);
    // Three threads, so reading + verifying the bundle, writing the slot and reading it back
    // overlap (each hashes or waits on I/O): the reader sends verified chunks in buffers from a
    // small pool; this thread writes them, syncs every segment and hands the segment to the
    // read-back thread. Memory stays at a few chunk buffers whatever the payload size.
    let segment = segment_len(rootfs);
    std::thread::scope(|scope| -> Result<()> {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Msg>(PIPELINE_BUFFERS);
        let (pool_tx, pool_rx) = mpsc::channel::<AlignedBuf>();
        // Each buffer carries a run of whole chunks of one payload: for the slot, one large write.
        let buf_len = [kernel, initrd]
            .iter()
            .map(|p| p.chunk_size as usize)
            .fold(write_batch(rootfs), usize::max);
        for _ in 0..PIPELINE_BUFFERS {
            pool_tx
                .send(AlignedBuf::new(buf_len))
                .expect("pool is open");
        }
        scope.spawn(move || read_chunks(reader, chunk_tx, pool_rx, buf_len));
        let (seg_tx, seg_rx) = mpsc::channel::<Segment>();
        let readback = scope.spawn(move || verify_segments(disk, part, rootfs, seg_rx));
        let mut root = RootWriter {
            disk,
            part,
            rootfs,
            segment,
            progress,
            seg_tx: Some(seg_tx),
            seg_start: 0,
            seg_sums: Vec::new(),
        };
        let mut boot_files = BootFileWriter {
            esp,
            kernel_path: &files.kernel,
            initrd_path: &files.initrd,
            kernel,
            initrd,
            file: None,
        };
        loop {
            let (kind, index, offset, last, mut data, len) = match chunk_rx.recv() {
                Ok(Msg::Chunk {
                    kind,
                    index,
                    offset,
                    last,
                    data,
                    len,
                }) => (kind, index, offset, last, data, len),
                Ok(Msg::End(Ok(()))) | Err(_) => break,
                Ok(Msg::End(Err(e))) => {
                    return Err(anyhow::Error::new(e).context("reading the bundle"))
                }
            };
            match kind {
                PayloadKind::Rootfs => root.write(index, offset, last, &mut data, len)?,
                kind @ (PayloadKind::Kernel | PayloadKind::Initrd) => {
                    boot_files.write(kind, index, last, &data.as_slice()[..len])?
                }
            }
            // Give the buffer back; a closed pool means the reader is done.
            let _ = pool_tx.send(data);
        }
        drop(root.seg_tx.take());
        readback
            .join()
            .map_err(|_| anyhow::anyhow!("read-back thread panicked"))??;
        info!("slot {target}: {} bytes written and read back", rootfs.size);
        Ok(())
    })?;
    check_boot_files(esp, target, kernel, initrd, info_json)
}

/// The full stream's slot writes: verified runs of root-image chunks onto the partition, synced
/// by segments that go to the read-back thread.
struct RootWriter<'a> {
    disk: &'a Disk,
    part: &'a Partition,
    rootfs: &'a Payload,
    /// Bytes per segment (`segment_len`).
    segment: u64,
    progress: Progress,
    /// To the read-back thread; `None` once the last segment went.
    seg_tx: Option<mpsc::Sender<Segment>>,
    seg_start: u64,
    /// The chunks' xxh3 sums of the segment being written.
    seg_sums: Vec<u128>,
}

impl RootWriter<'_> {
    /// Writes one run of chunks at `offset`; hands a full (or the last) segment on.
    fn write(
        &mut self,
        index: u64,
        offset: u64,
        last: bool,
        data: &mut AlignedBuf,
        len: usize,
    ) -> Result<()> {
        let (disk, part) = (self.disk, self.part);
        self.seg_sums.extend(
            data.as_slice()[..len]
                .chunks(self.rootfs.chunk_size as usize)
                .map(xxh3_128),
        );
        fault::lying_medium(&mut data.as_mut_slice()[..len]);
        disk.write_to_device(part, offset, data, len)
            .with_context(|| format!("writing chunk {index} to {}", part.label))?;
        fault::point("slot write");
        let end = offset + len as u64;
        self.progress.update(end);
        if last || end - self.seg_start >= self.segment {
            // Start writing the segment out; the read-back thread waits for it.
            disk.start_writeback(part, self.seg_start, end - self.seg_start);
            if last {
                disk.sync()?;
            }
            if let Some(tx) = &self.seg_tx {
                // A closed channel means the read-back failed; its error is
                // collected below.
                let _ = tx.send(Segment {
                    start: self.seg_start,
                    end,
                    sums: std::mem::take(&mut self.seg_sums),
                });
            }
            self.seg_start = end;
        }
        if last {
            self.progress.finish();
            // The read-back finishes while the boot files are written.
            self.seg_tx = None;
        }
        Ok(())
    }
}

/// The full stream's kernel and initrd: written to the slot's files on the ESP as their
/// verified chunks come, each whole file checked against its signed digest.
struct BootFileWriter<'a, 'd> {
    esp: &'a Esp<'d>,
    kernel_path: &'a str,
    initrd_path: &'a str,
    kernel: &'a Payload,
    initrd: &'a Payload,
    /// The file being written and its running sha256.
    file: Option<(EspFile<'a, 'd>, Sha256)>,
}

impl BootFileWriter<'_, '_> {
    /// Writes chunk `index` of payload `kind`: chunk 0 creates the file, the last one flushes
    /// it and checks the whole file's digest.
    fn write(&mut self, kind: PayloadKind, index: u64, last: bool, bytes: &[u8]) -> Result<()> {
        let path = if kind == PayloadKind::Kernel {
            self.kernel_path
        } else {
            self.initrd_path
        };
        if index == 0 {
            self.file = Some((self.esp.create(path)?, Sha256::new()));
        }
        let (f, hash) = self.file.as_mut().context("payload chunks out of order")?;
        hash.update(bytes);
        f.write_all(bytes)
            .with_context(|| format!("writing {path} on the ESP"))?;
        if last {
            f.flush()
                .with_context(|| format!("flushing {path} on the ESP"))?;
            // The chunks matched the signed table, so a different whole-file
            // digest is the manifest's fault, not the medium's (checked here so
            // the read-back below only has to judge the medium).
            let p = if kind == PayloadKind::Kernel {
                self.kernel
            } else {
                self.initrd
            };
            let (_, hash) = self.file.take().expect("just used");
            if hash.finalize()[..] != p.sha256.0 {
                return Err(abbundle::FormatError::BadManifest(format!(
                    "payload {kind}'s sha256 does not match its verified chunks"
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// The HTTP(S) range source for a delta apply, on the client that read the front: the plan's
/// ranges, the first one already asked for. `None` when the front came whole (the server
/// ignores Range; then the full stream).
#[cfg(feature = "http")]
fn http_fetch(
    ranges: Option<fetch::HttpRanges>,
    m: &abbundle::Manifest,
    maps: &[delta::SeedMap],
) -> Result<Option<Box<dyn delta_apply::Fetch>>> {
    let Some(mut ranges) = ranges else {
        return Ok(None);
    };
    let plan: Vec<delta::Range> = m
        .payloads
        .iter()
        .zip(maps)
        .flat_map(|(p, map)| delta::ranges(p, map))
        .collect();
    // A 200 here (the server ignored this Range) is the whole bundle: the chunks are read
    // from it, and no request is left to fail that way once the slot is written.
    let first = match plan.first() {
        Some(r) => Some(ranges.get(r.start, r.end)?),
        None => None,
    };
    Ok(Some(Box::new(delta_apply::HttpSource::new(
        ranges, plan, first,
    ))))
}

#[cfg(not(feature = "http"))]
fn http_fetch(
    _: Option<fetch::HttpRanges>,
    _: &abbundle::Manifest,
    _: &[delta::SeedMap],
) -> Result<Option<Box<dyn delta_apply::Fetch>>> {
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

/// Steps 1 to 3 from a format 2 bundle read at offsets: make the slot unbootable, write the
/// root from seeds and the bundle's missing chunks (each checked against the signed index),
/// read it back, then the boot files the same way (`delta_apply`).
#[allow(clippy::too_many_arguments)]
fn write_slot_delta(
    ctx: &Ctx,
    disk: &Disk,
    esp: &Esp,
    loader: &dyn BootLoader,
    part: &Partition,
    target: Slot,
    maps: &[delta::SeedMap],
    src: &mut dyn delta_apply::Fetch,
    [rootfs, kernel, initrd]: [&Payload; 3],
    info_json: &[u8],
) -> Result<()> {
    loader.make_unbootable(esp, target)?;
    delta::store_index(disk, part, rootfs, maps[0].entries())?;
    let keep = disk.partition(target.other().partition_label())?;
    let files = target.files();
    let counts = [
        delta_apply::write_root(disk, target, part, keep, rootfs, &maps[0], src, ctx.quiet)?,
        delta_apply::write_boot_file(esp, target, &files.kernel, kernel, &maps[1], src)?,
        delta_apply::write_boot_file(esp, target, &files.initrd, initrd, &maps[2], src)?,
    ];
    check_boot_files(esp, target, kernel, initrd, info_json)?;
    let t = delta_apply::total(&counts);
    info!(
        "delta: {} bytes read from the bundle, {} copied from seeds, {} already in place",
        t.fetched, t.copied, t.in_place
    );
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

/// Buffers (runs of chunks, up to 2 MiB) in flight between the bundle reader and the writer.
const PIPELINE_BUFFERS: usize = 3;

/// A verified chunk (or the end of the bundle) from the reader thread.
enum Msg {
    Chunk {
        kind: PayloadKind,
        index: u64,
        offset: u64,
        last: bool,
        data: AlignedBuf,
        len: usize,
    },
    End(std::result::Result<(), abbundle::FormatError>),
}

/// A run of verified chunks of one payload being gathered in one buffer.
struct Run {
    /// The first chunk's place (set once it is read).
    first: Option<ChunkInfo>,
    buf: AlignedBuf,
    len: usize,
}

/// The reader thread: verified chunks out, read straight into buffers from `pool` and
/// gathered into runs of up to `cap` bytes of one payload.
fn read_chunks(
    mut reader: BundleReader<Box<dyn std::io::Read + Send>>,
    out: mpsc::SyncSender<Msg>,
    pool: mpsc::Receiver<AlignedBuf>,
    cap: usize,
) {
    // Hands a run to the writer; false once the writer is gone.
    let send = |run: Run, last: bool| -> bool {
        let first = run.first.expect("a run holds a chunk");
        out.send(Msg::Chunk {
            kind: first.kind,
            index: first.index,
            offset: first.offset,
            last,
            data: run.buf,
            len: run.len,
        })
        .is_ok()
    };
    let mut run: Option<Run> = None;
    loop {
        let Some((kind, len)) = reader.upcoming() else {
            let _ = out.send(Msg::End(Ok(())));
            return;
        };
        // Runs end at their payload's last chunk or when the next chunk would not fit (below),
        // so this only guards the buffer's bounds.
        if run
            .as_ref()
            .is_some_and(|r| r.first.is_some_and(|f| f.kind != kind) || r.len + len > cap)
            && !send(run.take().expect("checked"), false)
        {
            return;
        }
        if run.is_none() {
            let Ok(buf) = pool.recv() else { return };
            run = Some(Run {
                first: None,
                buf,
                len: 0,
            });
        }
        let r = run.as_mut().expect("just set");
        let c = match reader.next_chunk_into(&mut r.buf.as_mut_slice()[r.len..]) {
            Ok(Some(c)) => c,
            Ok(None) => unreachable!("upcoming() promised a chunk"),
            Err(e) => {
                let _ = out.send(Msg::End(Err(e)));
                return;
            }
        };
        r.first.get_or_insert(c);
        r.len += c.len;
        if (c.last || r.len + c.len > cap) && !send(run.take().expect("just set"), c.last) {
            return;
        }
    }
}

/// How much of the slot is handed to the read-back thread at a time: an eighth of the image,
/// between 1 and 32 MiB, in whole chunks (the read-back trails the writes by about that much).
fn segment_len(p: &Payload) -> u64 {
    let cs = p.chunk_size as u64;
    (p.size / 8).clamp(1 << 20, 32 << 20).div_ceil(cs) * cs
}

/// Size of each slot write: 2 MiB (large writes let the device stream), but at least 8 writes
/// per image so small images still get written in several steps; whole chunks, at least one.
fn write_batch(p: &Payload) -> usize {
    let cs = p.chunk_size as u64;
    // At least one chunk: chunks may be larger than 2 MiB (up to the format's 4 MiB).
    ((p.size / 8).min(2 << 20) / cs).max(1) as usize * cs as usize
}

/// Size of each read-back read: large, so the device streams (whole chunks).
const READBACK_IO: u64 = 2 << 20;

/// A written stretch of the slot, for the read-back thread: its byte range and the XXH3-128
/// checksum of each chunk of it, taken from the verified bytes that were written.
struct Segment {
    start: u64,
    end: u64,
    sums: Vec<u128>,
}

/// The read-back thread: waits until each segment is written out, reads it from the device
/// (`O_DIRECT`, or after dropping it from the page cache) and checks that every chunk reads
/// back as the verified bytes that were written.
///
/// Why a checksum and not the manifest's SHA-256 again: those bytes were already checked
/// against the signed chunk table before they were written; the read-back has to catch a
/// medium that does not store what it was given, not an attacker, and XXH3-128 does that at
/// memory speed, where a second SHA-256 pass took half the apply's CPU time.
fn verify_segments(
    disk: &Disk,
    part: &Partition,
    p: &Payload,
    segments: mpsc::Receiver<Segment>,
) -> Result<()> {
    let cs = p.chunk_size as u64;
    let io = READBACK_IO.max(cs) / cs * cs;
    let mut buf = AlignedBuf::new(io as usize);
    for Segment { start, end, sums } in segments {
        disk.wait_writeback(part, start, end - start);
        let mut pos = start;
        while pos < end {
            let n = io.min(end - pos);
            disk.read_from_device(part, pos, &mut buf, n as usize)
                .with_context(|| format!("reading back {} at {pos}", part.label))?;
            for i in pos / cs..(pos + n).div_ceil(cs) {
                let len = p.chunk_len(i) as usize;
                let at = (i * cs - pos) as usize;
                let want = sums.get((i - start / cs) as usize).copied();
                if Some(xxh3_128(&buf.as_slice()[at..at + len])) != want {
                    refuse!(
                        codes::READBACK_MISMATCH,
                        "{} does not read back as written (chunk {i} at offset {}): the medium may be failing",
                        part.label,
                        i * cs
                    );
                }
            }
            pos += n;
        }
    }
    Ok(())
}
