//! The pipeline's source for a plan (a format 2 bundle read at offsets): every chunk of the
//! signed index comes from where the plan found it: already in place in the target slot,
//! copied from a seed (the staying slot, its kernel and initrd on the ESP), or read from the
//! bundle (a file, a block device, HTTP ranges fetched ahead). Each copied or read chunk is
//! checked against the index before it is sent; a seed chunk that does not match (the disk
//! changed since it was scanned) is read from the bundle instead.

use abbundle::{FormatError, Payload, PayloadKind};
use anyhow::Result;
use sha2::{Digest as _, Sha256};

use crate::disk::{Disk, Partition};
use crate::fetch::ranged::Fetch;
use crate::install::delta::{seed, Loc, SeedMap};
use crate::install::pipeline::{Msg, Sink};

/// Bytes by where they came from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Read from the bundle.
    pub fetched: u64,
    /// Copied from a seed.
    pub copied: u64,
    /// Already in place, not written.
    pub in_place: u64,
}

/// Where seed chunks are read. The staying slot's boot files are read by where their clusters
/// lie on the disk (located before the pipeline starts), not through the FAT driver, which the
/// writer uses meanwhile; nothing writes those files during an apply.
pub struct Seeds<'a> {
    pub disk: &'a Disk,
    /// The staying slot.
    pub keep: &'a Partition,
    pub esp: &'a Partition,
    /// The staying slot's kernel and initrd: (offset in the ESP, length) runs.
    pub kernel: Vec<(u64, u64)>,
    pub initrd: Vec<(u64, u64)>,
}

impl Seeds<'_> {
    fn read(&self, kind: PayloadKind, loc: Loc, buf: &mut [u8]) -> Result<()> {
        match loc.seed {
            seed::KEEP_SLOT => Ok(self.disk.read_at(self.keep, loc.offset, buf)?),
            seed::KEEP_FILE => {
                let runs = if kind == PayloadKind::Kernel {
                    &self.kernel
                } else {
                    &self.initrd
                };
                let (mut at, mut done) = (loc.offset, 0usize);
                let mut file_pos = 0u64;
                for &(start, len) in runs {
                    while done < buf.len() && at < file_pos + len {
                        let n = ((file_pos + len - at) as usize).min(buf.len() - done);
                        self.disk.read_at(
                            self.esp,
                            start + (at - file_pos),
                            &mut buf[done..done + n],
                        )?;
                        (at, done) = (at + n as u64, done + n);
                    }
                    file_pos += len;
                }
                anyhow::ensure!(done == buf.len(), "past the end of the seed file");
                Ok(())
            }
            _ => anyhow::bail!("not a copy seed"),
        }
    }
}

/// Sends the chunks of `[rootfs, kernel, initrd]` (each with its seed map) in order, gathered
/// into runs; chunks in place in the target slot as [`Msg::InPlace`]; nothing for a boot file
/// that already equals its payload. Returns early (with what it counted) if the writer is gone.
pub fn produce(
    jobs: [(&Payload, &SeedMap); 3],
    seeds: &Seeds,
    src: &mut dyn Fetch,
    sink: Sink,
) -> Result<Counts> {
    let mut counts = Counts::default();
    for (p, map) in jobs {
        if p.kind != PayloadKind::Rootfs && map.all_from(seed::TARGET_FILE) {
            counts.in_place += p.size;
            continue;
        }
        // The run being gathered: its offset in the payload, buffer and length.
        let mut run: Option<(u64, crate::disk::direct::AlignedBuf, usize)> = None;
        let n = map.entries().len();
        let mut at = 0u64;
        for (i, e) in map.entries().iter().enumerate() {
            let (len, last) = (e.len as usize, i + 1 == n);
            if map.loc(i).is_some_and(|l| l.seed == seed::TARGET_IN_PLACE) {
                if let Some((offset, data, len)) = run.take() {
                    if !sink.send(Msg::Data {
                        kind: p.kind,
                        offset,
                        data,
                        len,
                        last: false,
                    }) {
                        return Ok(counts);
                    }
                }
                counts.in_place += len as u64;
                if !sink.send(Msg::InPlace {
                    offset: at,
                    len: len as u64,
                    last,
                }) {
                    return Ok(counts);
                }
                at += len as u64;
                continue;
            }
            if run.is_none() {
                let Some(buf) = sink.buffer() else {
                    return Ok(counts);
                };
                run = Some((at, buf, 0));
            }
            let (_, buf, filled) = run.as_mut().expect("just set");
            let out = &mut buf.as_mut_slice()[*filled..*filled + len];
            chunk(p, map, i, at, seeds, src, out, &mut counts)?;
            *filled += len;
            at += len as u64;
            if last || *filled + abbundle::index::MAX_CHUNK as usize > sink.batch {
                let (offset, data, len) = run.take().expect("just used");
                if !sink.send(Msg::Data {
                    kind: p.kind,
                    offset,
                    data,
                    len,
                    last,
                }) {
                    return Ok(counts);
                }
            }
        }
    }
    Ok(counts)
}

/// Fills `buf` with chunk `i` of `p` (at `at` in it): from its seed if that holds the right
/// bytes, else from the bundle; either way checked against the signed index.
#[allow(clippy::too_many_arguments)]
fn chunk(
    p: &Payload,
    map: &SeedMap,
    i: usize,
    at: u64,
    seeds: &Seeds,
    src: &mut dyn Fetch,
    buf: &mut [u8],
    counts: &mut Counts,
) -> Result<()> {
    let e = &map.entries()[i];
    if let Some(loc) = map.loc(i) {
        if seeds.read(p.kind, loc, buf).is_ok() && Sha256::digest(&*buf)[..] == e.digest.0 {
            counts.copied += buf.len() as u64;
            return Ok(());
        }
        tracing::warn!(
            "{} chunk {i}: the seed no longer holds it; reading it from the bundle",
            p.kind
        );
    }
    src.read_exact_at(buf, p.offset + at)?;
    if Sha256::digest(&*buf)[..] != e.digest.0 {
        return Err(FormatError::ChunkHashMismatch {
            payload: p.kind.to_string(),
            index: i as u64,
        }
        .into());
    }
    counts.fetched += buf.len() as u64;
    Ok(())
}
