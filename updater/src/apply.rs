//! `abupdate apply`: orchestration only. The order of the steps is what makes a power cut at
//! any moment leave a machine that boots a complete system (docs/updater.md):
//!
//! 0. check everything that can be checked without writing: lock, disk, target slot, the
//!    bundle's signature, compatible string, version and size;
//! 1. remove the target slot's boot entries (sync): from here on the slot cannot boot;
//! 2. stream the root image into the target partition, each chunk verified against the
//!    signed manifest before it is written; sync; read it back from the device and check
//!    every chunk again;
//! 3. write kernel, initrd and info.json to `X/` on the ESP (sync, read back, check);
//! 4. write the entry `slot-X+N.conf` with the bundle's version (sync). Only now can the
//!    new slot boot, and systemd-boot prefers it because its version is the highest.

use std::io::Write;

use abbundle::{BundleReader, Payload, PayloadKind, TrustedKeys, Version};
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::bootentries::{EntryFile, EntryName, Slot};
use crate::codes;
use crate::disk::{Disk, Partition};
use crate::esp::{entry_path, Esp, EspFile};
use crate::progress::Progress;
use crate::slots::{self, SlotInfo, SlotState};
use crate::{entries, fault, lock, refuse, source, Context as Ctx};

/// What `apply` was asked to do.
pub struct Request<'a> {
    pub source: &'a str,
    pub allow_downgrade: bool,
    pub slot: Option<Slot>,
    pub reboot: bool,
}

pub fn run(ctx: &Ctx, r: &Request) -> Result<()> {
    let _lock = lock::acquire()?;
    let (disk, running) = slots::open(ctx.disk.as_deref(), false)?;
    let esp = Esp::open(&disk)?;
    let view = slots::view(&esp)?;
    let active = running.or(view.next.as_ref().map(|n| n.0));
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
    if let Some(a) = active.filter(|&a| a != target) {
        let (av, tv) = (view.slot(a), view.slot(target));
        if tv.state == SlotState::Good && av.state != SlotState::Good {
            refuse!(
                codes::NO_FALLBACK,
                "slot {target} is the only good slot and slot {a} is not marked good yet \
                 ({}); run 'abupdate mark-good' first; nothing was changed",
                av.state.name()
            );
        }
    }
    let Some(compatible) = ctx.config.compatible.as_deref() else {
        refuse!(
            codes::NOT_CONFIGURED,
            "no compatible string configured (set compatible in {}); nothing was changed",
            ctx.config_path.display()
        );
    };
    let keys = TrustedKeys::load_dir(&ctx.keys)
        .with_context(|| format!("loading trusted keys from {}", ctx.keys.display()))?;

    let stream = source::open(r.source)?;
    let mut reader =
        BundleReader::open(stream, &keys).with_context(|| format!("verifying {}", r.source))?;
    reader.check_compatible(compatible)?;
    let m = reader.manifest();
    let version = m.version.clone();
    let rootfs = m.payload(PayloadKind::Rootfs).clone();
    let kernel = m.payload(PayloadKind::Kernel).clone();
    let initrd = m.payload(PayloadKind::Initrd).clone();
    let info = SlotInfo {
        version: version.to_string(),
        compatible: m.compatible.clone(),
        build_id: m.build_id.clone(),
        rootfs_size: rootfs.size,
        rootfs_sha256: rootfs.sha256.to_string(),
        created: m.created,
    };
    let kernel_params = m.kernel_params.clone();
    if let Some(a) = active.filter(|&a| a != target) {
        if let Some(installed) = view
            .slot(a)
            .version
            .as_deref()
            .and_then(|v| v.parse::<Version>().ok())
        {
            if version <= installed && !r.allow_downgrade {
                refuse!(
                    codes::DOWNGRADE_REFUSED,
                    "bundle version {version} is not newer than {installed} in slot {a}; \
                     use --allow-downgrade to install it anyway; nothing was changed"
                );
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
    let written = write_slot(
        ctx,
        &disk,
        &esp,
        &part,
        target,
        &mut reader,
        [&rootfs, &kernel, &initrd],
        &info,
    )
    .and_then(|()| {
        let name = EntryName::trying(target, ctx.config.boot_tries);
        let contents = EntryFile::for_slot(target, version.as_str(), &kernel_params).format();
        write_entry(&esp, &disk, &name.file_name(), &contents)
    });
    if let Err(e) = written {
        return Err(e.context(format!(
            "installing into slot {target} failed: slot {target} has no boot entry and will not boot; \
             the running system and its boot entry are untouched"
        )));
    }

    // A downgrade (or reinstall) has a version no newer than the other slot's, so systemd-boot
    // would keep booting the other slot: take that one out of the running while keeping it as
    // the fallback (an entry with 0 tries left boots if the new one fails).
    let after = slots::view(&esp)?;
    if after.next.as_ref().map(|n| n.0) != Some(target) {
        let other = target.other();
        warn!("slot {target} has an older or equal version than slot {other}: demoting slot {other}'s entry");
        entries::demote(&esp, &after, other)?;
    }
    esp.close()?;

    let disk = Disk::open(&disk.path, true)?;
    let esp = Esp::open(&disk)?;
    let after = slots::view(&esp)?;
    if after.next.as_ref().map(|n| n.0) != Some(target) {
        anyhow::bail!("slot {target} was installed but systemd-boot would not boot it next (bug)");
    }
    fault::report();
    println!(
        "installed version {version} into slot {target}; it boots next with {} tries; \
         run 'abupdate mark-good' once it is up",
        ctx.config.boot_tries
    );
    if r.reboot {
        info!("rebooting");
        let status = std::process::Command::new("reboot")
            .status()
            .context("running reboot")?;
        if !status.success() {
            anyhow::bail!("reboot failed: {status}");
        }
    }
    Ok(())
}

/// Steps 1 to 3: remove the entry, write and check the slot, write and check the boot files.
#[allow(clippy::too_many_arguments)]
fn write_slot(
    ctx: &Ctx,
    disk: &Disk,
    esp: &Esp,
    part: &Partition,
    target: Slot,
    reader: &mut BundleReader<Box<dyn std::io::Read>>,
    [rootfs, kernel, initrd]: [&Payload; 3],
    info: &SlotInfo,
) -> Result<()> {
    let view = slots::view(esp)?;
    for e in &view.slot(target).entries {
        info!("removing boot entry {}", e.file);
        esp.remove(&entry_path(&e.file))?;
    }
    esp.sync()?;

    let kernel_path = format!("{target}/vmlinuz");
    let initrd_path = format!("{target}/initrd");
    let mut progress = Progress::new(&format!("slot {target}"), rootfs.size, ctx.quiet);
    let mut file: Option<EspFile> = None;
    while let Some(chunk) = reader.next_chunk().context("reading the bundle")? {
        match chunk.kind {
            PayloadKind::Rootfs => {
                disk.write_at(part, chunk.offset, chunk.data)
                    .with_context(|| format!("writing chunk {} to {}", chunk.index, part.label))?;
                fault::point("slot write");
                progress.update(chunk.offset + chunk.data.len() as u64);
                if chunk.last {
                    progress.finish();
                    disk.sync()?;
                    verify_slot(disk, part, rootfs)?;
                    info!("slot {target}: {} bytes written and read back", rootfs.size);
                }
            }
            kind @ (PayloadKind::Kernel | PayloadKind::Initrd) => {
                let path = if kind == PayloadKind::Kernel {
                    &kernel_path
                } else {
                    &initrd_path
                };
                if chunk.index == 0 {
                    file = Some(esp.create(path)?);
                }
                let f = file.as_mut().context("payload chunks out of order")?;
                f.write_all(chunk.data)
                    .with_context(|| format!("writing {path} on the ESP"))?;
                if chunk.last {
                    f.flush()
                        .with_context(|| format!("flushing {path} on the ESP"))?;
                    file = None;
                }
            }
        }
    }
    esp.sync()?;
    let esp_part = disk.partition("esp")?;
    disk.drop_cache(esp_part, esp_part.len);
    for (path, p) in [(&kernel_path, kernel), (&initrd_path, initrd)] {
        let (hash, len) = esp.hash_file(path)?;
        if hash != p.sha256.0 || len != p.size {
            refuse!(
                codes::READBACK_MISMATCH,
                "{path} on the ESP does not read back as written"
            );
        }
    }
    let json = serde_json::to_vec_pretty(info)?;
    let info_path = format!("{target}/info.json");
    esp.write_file(&info_path, &json)?;
    esp.sync()?;
    if esp.read_small(&info_path)?.as_deref() != Some(&json[..]) {
        refuse!(
            codes::READBACK_MISMATCH,
            "{info_path} on the ESP does not read back as written"
        );
    }
    info!("slot {target}: kernel, initrd and info.json written to the ESP");
    Ok(())
}

/// Reads the slot back from the device (not the page cache) and checks every chunk.
fn verify_slot(disk: &Disk, part: &Partition, p: &Payload) -> Result<()> {
    disk.drop_cache(part, p.size);
    let mut buf = vec![0u8; p.chunk_size as usize];
    for (i, want) in p.chunks.iter().enumerate() {
        let len = p.chunk_len(i as u64) as usize;
        let off = i as u64 * p.chunk_size as u64;
        disk.read_at(part, off, &mut buf[..len])
            .with_context(|| format!("reading back {} at {off}", part.label))?;
        if Sha256::digest(&buf[..len])[..] != want.0 {
            refuse!(
                codes::READBACK_MISMATCH,
                "{} does not read back as written (chunk {i} at offset {off}): the medium may be failing",
                part.label
            );
        }
    }
    Ok(())
}

/// Step 4: the entry, written, synced and read back.
fn write_entry(esp: &Esp, disk: &Disk, file: &str, contents: &str) -> Result<()> {
    let path = entry_path(file);
    esp.write_file(&path, contents.as_bytes())?;
    esp.sync()?;
    let esp_part = disk.partition("esp")?;
    disk.drop_cache(esp_part, esp_part.len);
    if esp.read_small(&path)?.as_deref() != Some(contents.as_bytes()) {
        refuse!(
            codes::READBACK_MISMATCH,
            "{path} on the ESP does not read back as written"
        );
    }
    info!("wrote boot entry {file}");
    Ok(())
}
