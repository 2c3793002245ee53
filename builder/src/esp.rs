//! The EFI system partition: FAT32 made with the `fatfs` crate inside the partition's region
//! of the image file, then filled with systemd-boot, `loader/loader.conf`, slot A's boot
//! files and its boot entry (`docs/layout.md`).
//!
//! fatfs 0.3.6 writes new directories wrongly (rafalh/rust-fatfs#117): it gives `.` and
//! `..` long-name entries placed before them, and on FAT32 it points `..` of a directory in
//! the root at the root's cluster instead of 0. `fsck.fat` calls that damage, and firmware
//! may too. [`fix_directories`] rewrites every directory after fatfs is done: `.` and `..`
//! first, as plain short entries with the right clusters, then the real entries in order.
//! Files and their data are fatfs' own.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use abbundle::fat32::{
    first_cluster, set_first_cluster, Geometry, ATTR_DIR, ATTR_LFN, BAD, DOT, DOTDOT, ENTRY, MASK,
};
use anyhow::{bail, Context, Result};
use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

use crate::disk::PartitionSpec;

/// Copy buffer for files going into the ESP.
const COPY_BUFFER: usize = 1 << 20;

/// The region of the image file a partition occupies, as a seekable stream of its own,
/// so fatfs cannot write outside it. Reads and writes are positional (pread/pwrite).
pub struct Region<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Region<'a> {
    pub fn new(file: &'a File, part: &PartitionSpec) -> Region<'a> {
        Region {
            file,
            start: part.offset,
            len: part.size,
            pos: 0,
        }
    }

    fn room(&self, want: usize) -> usize {
        (self.len.saturating_sub(self.pos)).min(want as u64) as usize
    }
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Region<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Region<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// What goes into a file on the ESP.
pub enum Source {
    /// A file on the build machine, copied.
    Path(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// The ESP's contents: directories (parents first) and files, `/`-separated, relative.
pub struct Contents {
    pub dirs: Vec<String>,
    pub files: Vec<(String, Source)>,
}

/// FAT timestamps for everything written: a fixed time, so the ESP's bytes depend only on
/// the inputs.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Converts seconds since the epoch (UTC) to a FAT date and time, clamped to FAT's range
/// (1980 to 2107; two-second resolution).
pub fn fat_time(epoch: u64) -> DateTime {
    let t = abbundle::fat_time::from_epoch(epoch);
    DateTime {
        date: Date {
            year: t.year,
            month: t.month,
            day: t.day,
        },
        time: Time {
            hour: t.hour,
            min: t.min,
            // FAT stores two-second steps.
            sec: t.sec / 2 * 2,
            millis: 0,
        },
    }
}

/// Cluster size for an ESP of `size` bytes: the largest of 4 KiB, 2 KiB, 1 KiB, 512 B that
/// still gives FAT32 its minimum of 65525 clusters (with some room for the FATs).
fn cluster_size(size: u64) -> u32 {
    [4096u32, 2048, 1024, 512]
        .into_iter()
        .find(|c| size / *c as u64 >= 66_000)
        .unwrap_or(512)
}

/// Formats the partition `part` of `image` as FAT32 and writes `contents` into it, with
/// every timestamp set to `epoch`. `volume_id` is the FAT serial number.
pub fn write(
    image: &File,
    part: &PartitionSpec,
    volume_id: u32,
    epoch: u64,
    contents: &Contents,
) -> Result<()> {
    let opts = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_cluster(cluster_size(part.size))
        .volume_id(volume_id)
        .volume_label(*b"ESP        ");
    fatfs::format_volume(Region::new(image, part), opts).context("formatting the ESP as FAT32")?;
    // The time provider must live as long as the program; one small leak per build.
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    let fs = FileSystem::new(
        Region::new(image, part),
        FsOptions::new()
            .time_provider(time)
            .update_accessed_date(false),
    )
    .context("opening the new ESP")?;
    {
        let root = fs.root_dir();
        for d in &contents.dirs {
            root.create_dir(d)
                .with_context(|| format!("creating {d}/ on the ESP"))?;
        }
        let mut buf = vec![0u8; COPY_BUFFER];
        for (path, src) in &contents.files {
            let mut f = root
                .create_file(path)
                .with_context(|| format!("creating {path} on the ESP"))?;
            f.truncate()
                .with_context(|| format!("truncating {path} on the ESP"))?;
            match src {
                Source::Bytes(b) => f
                    .write_all(b)
                    .with_context(|| format!("writing {path} on the ESP"))?,
                Source::Path(p) => {
                    let mut input =
                        File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    loop {
                        let n = input
                            .read(&mut buf)
                            .with_context(|| format!("reading {}", p.display()))?;
                        if n == 0 {
                            break;
                        }
                        f.write_all(&buf[..n]).with_context(|| {
                            format!("writing {path} on the ESP (is esp-size too small for the kernel and initrd?)")
                        })?;
                    }
                }
            }
            f.flush()
                .with_context(|| format!("flushing {path} on the ESP"))?;
        }
    }
    fs.unmount().context("closing the ESP")?;
    fix_directories(&mut Region::new(image, part)).context("fixing the ESP's directory entries")
}

/// The FAT32 geometry of the file system on `dev`.
fn geometry<D: Read + Seek>(dev: &mut D) -> io::Result<Geometry> {
    let mut bs = [0u8; 512];
    dev.seek(SeekFrom::Start(0))?;
    dev.read_exact(&mut bs)?;
    Geometry::parse(&bs).map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))
}

/// The clusters of the chain starting at `first`.
fn chain<D: Read + Seek>(dev: &mut D, g: &Geometry, first: u32) -> io::Result<Vec<u32>> {
    let mut out = vec![first];
    let mut c = first;
    loop {
        let mut e = [0u8; 4];
        dev.seek(SeekFrom::Start(g.fat_start + c as u64 * 4))?;
        dev.read_exact(&mut e)?;
        c = u32::from_le_bytes(e) & MASK;
        if !(2..BAD).contains(&c) {
            return Ok(out);
        }
        if out.len() as u64 > g.clusters {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "FAT chain loops",
            ));
        }
        out.push(c);
    }
}

/// Rewrites every directory below the root of the FAT32 file system on `dev` so that `.` and
/// `..` are its first two entries, short-named only, with `..` pointing at the parent (0 for
/// the root), and the other entries follow in their order. Idempotent: correct directories
/// are rewritten unchanged.
pub fn fix_directories<D: Read + Write + Seek>(dev: &mut D) -> io::Result<()> {
    let g = geometry(dev)?;
    // (directory's first cluster, parent's cluster as `..` records it)
    let mut todo: Vec<(u32, u32)> = Vec::new();
    let root_entries = read_dir(dev, &g, g.root_cluster)?.1;
    push_subdirs(&root_entries, 0, &mut todo);
    while let Some((dir, parent)) = todo.pop() {
        let (clusters, entries) = read_dir(dev, &g, dir)?;
        let mut dot = None;
        let mut dotdot = None;
        let mut rest: Vec<[u8; ENTRY]> = Vec::new();
        let mut pending_lfn: Vec<[u8; ENTRY]> = Vec::new();
        for e in entries {
            if e[11] == ATTR_LFN {
                pending_lfn.push(e);
                continue;
            }
            let lfn = std::mem::take(&mut pending_lfn);
            if e[..11] == DOT {
                dot = Some(e);
            } else if e[..11] == DOTDOT {
                dotdot = Some(e);
            } else {
                rest.extend(lfn);
                rest.push(e);
            }
        }
        let (Some(mut dot), Some(mut dotdot)) = (dot, dotdot) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("directory at cluster {dir} has no . or .."),
            ));
        };
        set_first_cluster(&mut dot, dir);
        set_first_cluster(&mut dotdot, parent);
        let mut out = Vec::with_capacity(clusters.len() * g.cluster_bytes as usize);
        for e in [dot, dotdot].iter().chain(&rest) {
            out.extend_from_slice(e);
        }
        out.resize(clusters.len() * g.cluster_bytes as usize, 0);
        for (i, c) in clusters.iter().enumerate() {
            let chunk = &out[i * g.cluster_bytes as usize..][..g.cluster_bytes as usize];
            dev.seek(SeekFrom::Start(g.cluster_offset(*c)))?;
            dev.write_all(chunk)?;
        }
        push_subdirs(&rest, dir, &mut todo);
    }
    dev.flush()
}

/// Reads a directory's clusters and its live entries (up to the end marker, without deleted ones).
fn read_dir<D: Read + Seek>(
    dev: &mut D,
    g: &Geometry,
    first: u32,
) -> io::Result<(Vec<u32>, Vec<[u8; ENTRY]>)> {
    let clusters = chain(dev, g, first)?;
    let mut entries = Vec::new();
    let mut buf = vec![0u8; g.cluster_bytes as usize];
    'outer: for c in &clusters {
        dev.seek(SeekFrom::Start(g.cluster_offset(*c)))?;
        dev.read_exact(&mut buf)?;
        for e in buf.chunks_exact(ENTRY) {
            match e[0] {
                0x00 => break 'outer,
                0xE5 => continue,
                _ => entries.push(e.try_into().unwrap()),
            }
        }
    }
    Ok((clusters, entries))
}

fn push_subdirs(entries: &[[u8; ENTRY]], parent: u32, todo: &mut Vec<(u32, u32)>) {
    for e in entries {
        if e[11] != ATTR_LFN && e[11] & ATTR_DIR != 0 && e[..11] != DOT && e[..11] != DOTDOT {
            let c = first_cluster(e);
            if c >= 2 {
                todo.push((c, parent));
            }
        }
    }
}

/// Fails unless `s` is a path fatfs and UEFI accept: `/`-separated, no empty parts.
pub fn check_path(s: &str) -> Result<()> {
    if s.is_empty() || s.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        bail!("invalid ESP path '{s}'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{derived_guid, ESP_LABEL};
    use std::path::Path;

    fn fsck(image: &Path) -> (bool, String) {
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(image)
            .output()
            .expect("running fsck.fat");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// fatfs alone leaves directories fsck.fat calls damaged; after [`fix_directories`] they
    /// are clean, and a second fix changes nothing.
    #[test]
    fn directories_are_fixed() {
        if crate::cmd::find_program("fsck.fat").is_none() {
            eprintln!("skipping: fsck.fat (dosfstools) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(40 << 20).unwrap();
        let part = PartitionSpec {
            number: 1,
            label: ESP_LABEL,
            type_guid: uuid::Uuid::nil(),
            uuid: derived_guid("t", "esp"),
            offset: 0,
            size: 40 << 20,
        };
        let contents = Contents {
            dirs: ["EFI", "EFI/BOOT", "loader", "loader/entries", "a"]
                .map(String::from)
                .to_vec(),
            files: vec![
                (
                    "loader/entries/slot-a.conf".into(),
                    Source::Bytes(b"title a\n".to_vec()),
                ),
                (
                    "a/a-file-with-a-long-name.txt".into(),
                    Source::Bytes(vec![7; 10_000]),
                ),
            ],
        };
        write(&f, &part, 1, 0, &contents).unwrap();
        let (ok, text) = fsck(&path);
        assert!(
            ok && !text.contains("damaged") && !text.contains("bad"),
            "{text}"
        );
        let before = std::fs::read(&path).unwrap();
        fix_directories(&mut Region::new(&f, &part)).unwrap();
        assert!(
            before == std::fs::read(&path).unwrap(),
            "fix_directories is not idempotent"
        );

        // Without the fix: what rafalh/rust-fatfs#117 describes.
        let fs = FileSystem::new(Region::new(&f, &part), FsOptions::new()).unwrap();
        fs.root_dir().create_dir("new-dir").unwrap();
        fs.unmount().unwrap();
        let (ok, text) = fsck(&path);
        // fsck.fat 4.2 says "Expected a valid '.' entry in this slot" and "Bad short file
        // name (..)". If fatfs is ever fixed, this fails: then the fix can go.
        assert!(
            !ok && text.contains("Expected a valid '.'"),
            "fatfs bug gone? {text}"
        );
        fix_directories(&mut Region::new(&f, &part)).unwrap();
        let (ok, text) = fsck(&path);
        assert!(ok, "{text}");
    }

    #[test]
    fn fat_times() {
        let t = fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = fat_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day), (1980, 1, 1));
        let t = fat_time(951_782_400); // 2000-02-29
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
    }
}
