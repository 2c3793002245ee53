//! New directories on the ESP in the form the FAT specification requires, where fatfs 0.3.6
//! gets it wrong (rafalh/rust-fatfs#117, fixed only in its unreleased master): it gives every
//! name long-name (LFN) entries, `.` and `..` included, so a new directory's first cluster
//! starts `[LFN][.][LFN][..]` instead of `[.][..]`, and the `..` of a directory in the FAT32
//! root points at the root's cluster instead of 0. `fsck.fat` reports such a directory as
//! damaged and would "repair" it by renaming and deleting entries.
//!
//! abbuild makes every directory abupdate writes into (docs/layout.md); this is for an ESP
//! that lost one (`b/`, `loader/entries`). Of "create it correctly or not at all", creating it
//! correctly is the choice here: refusing would leave a device that cannot update itself and,
//! with no vfat in its kernel, cannot repair its own ESP either. It stays safe because it is
//! narrow:
//! - before fatfs creates anything, [`check`] requires a FAT32 ESP (what abbuild makes) and a
//!   name that is its own upper-case 8.3 short name, so the directory can be found again by its
//!   short entry without a long-name reader; otherwise nothing is created and the error says so;
//! - after fatfs has created it, [`fix_new`] finds its first cluster through the parent's
//!   short entry, and rewrites it only if it is exactly what fatfs 0.3.6 writes (or already
//!   right but for `..`): `.` and `..` (its timestamps kept) become the first two entries, `..`
//!   points at the parent (0 for the root), the two freed entries end the directory. Anything
//!   else is an error, and nothing is rewritten.
//!
//! [`file_extent`] also reads, for a file rewritten in place (GRUB's environment blocks), where
//! its data lies, from the same raw parsing.
//!
//! The bytes go through the ESP's own [`Window`] (and block cache), the one fatfs uses, so
//! both see the same sectors, and the ESP's sync makes them durable with the rest.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::disk::window::Window;

use abbundle::fat32::{
    self, first_cluster as cluster_of, set_first_cluster as set_cluster, ATTR_DIR, ATTR_LFN,
    ATTR_VOLUME, BAD, DELETED, DOT, DOTDOT, ENTRY, MASK,
};

/// The ESP's FAT32 layout, and the directory walks this module needs over it.
struct Geometry(fat32::Geometry);

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_at(w: &mut Window, at: u64, buf: &mut [u8]) -> io::Result<()> {
    w.seek(SeekFrom::Start(at))?;
    w.read_exact(buf)
}

impl Geometry {
    /// The ESP's boot sector, if the ESP is FAT32.
    fn read(w: &mut Window) -> io::Result<Geometry> {
        let mut b = [0u8; 512];
        read_at(w, 0, &mut b)?;
        fat32::Geometry::parse(&b).map(Geometry).map_err(|why| {
            bad(format!(
                "the ESP's boot sector: {why} (abbuild makes it FAT32), so abupdate does not \
                 create directories on it"
            ))
        })
    }

    fn check_cluster(&self, c: u32) -> io::Result<u32> {
        if !self.0.valid(c) {
            return Err(bad(format!("cluster {c} is not on the ESP")));
        }
        Ok(c)
    }

    fn offset(&self, c: u32) -> u64 {
        self.0.cluster_offset(c)
    }

    /// The clusters of the chain starting at `first`, bounded by the cluster count.
    fn chain(&self, w: &mut Window, first: u32) -> io::Result<Vec<u32>> {
        let mut out = vec![self.check_cluster(first)?];
        loop {
            let mut e = [0u8; 4];
            read_at(
                w,
                self.0.fat_start + *out.last().expect("one") as u64 * 4,
                &mut e,
            )?;
            let next = u32::from_le_bytes(e) & MASK;
            if next > BAD {
                return Ok(out);
            }
            if out.len() as u64 >= self.0.clusters {
                return Err(bad("a cluster chain on the ESP loops"));
            }
            out.push(self.check_cluster(next)?);
        }
    }

    /// The first cluster of the subdirectory whose short name is `name` in the directory
    /// starting at `dir`.
    fn find(&self, w: &mut Window, dir: u32, name: &[u8; 11]) -> io::Result<Option<u32>> {
        match self.find_entry(w, dir, name, true)? {
            Some(e) => self.check_cluster(cluster_of(&e)).map(Some),
            None => Ok(None),
        }
    }

    /// The short directory entry named `name` in the directory starting at `dir`, of a
    /// subdirectory (`want_dir`) or of a file.
    fn find_entry(
        &self,
        w: &mut Window,
        dir: u32,
        name: &[u8; 11],
        want_dir: bool,
    ) -> io::Result<Option<[u8; ENTRY]>> {
        let mut buf = vec![0u8; self.0.cluster_bytes as usize];
        for c in self.chain(w, dir)? {
            read_at(w, self.offset(c), &mut buf)?;
            for e in buf.chunks_exact(ENTRY) {
                if e[0] == 0 {
                    return Ok(None);
                }
                let attr = e[11];
                if e[0] == DELETED || attr == ATTR_LFN || attr & ATTR_VOLUME != 0 {
                    continue;
                }
                if &e[..11] == name && (attr & ATTR_DIR != 0) == want_dir {
                    return Ok(Some(e.try_into().expect("one entry")));
                }
            }
        }
        Ok(None)
    }

    /// The first cluster of the directory at `path` (the root for an empty path).
    fn dir(&self, w: &mut Window, path: &[&str]) -> io::Result<u32> {
        let mut c = self.0.root_cluster;
        for part in path {
            let name = short_name(part).ok_or_else(|| bad(format!("{part}: not a short name")))?;
            c = self
                .find(w, c, &name)?
                .ok_or_else(|| bad(format!("no directory {} on the ESP", path.join("/"))))?;
        }
        Ok(c)
    }
}

/// `name` as an 8.3 short name if it is one already, up to case: 1 to 8 letters, digits, `-`
/// or `_` (every directory abupdate uses: `a`, `b`, `loader`, `entries`).
fn short_name(name: &str) -> Option<[u8; 11]> {
    let ok = (1..=8).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| {
        let mut n = [b' '; 11];
        n[..name.len()].copy_from_slice(name.to_ascii_uppercase().as_bytes());
        n
    })
}

/// Where a file's data lies on the ESP (for files rewritten in place, one sector at a time:
/// GRUB's environment blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset of the file's first cluster inside the partition.
    pub offset: u64,
    /// The file's length from its directory entry.
    pub len: u64,
    /// How many clusters its chain has.
    pub clusters: usize,
    pub cluster_bytes: u64,
    /// Its first cluster (0 for an empty file).
    pub first: u32,
    /// The first cluster of its directory, and its short name there (to tell its own entry
    /// from others).
    dir: u32,
    name: [u8; 11],
}

/// The extent of the file whose 8.3 short name is `short` (as fatfs shows it: `ENV1`,
/// `NAME.EXT`) in directory `parent`, read from the directory entry and the FAT. Reads only.
pub fn file_extent(w: &mut Window, parent: &[&str], short: &str) -> io::Result<Extent> {
    let g = Geometry::read(w)?;
    let dir = g.dir(w, parent)?;
    let (base, ext) = short.split_once('.').unwrap_or((short, ""));
    if base.is_empty() || base.len() > 8 || ext.len() > 3 {
        return Err(bad(format!("'{short}' is not a short name")));
    }
    let mut name = [b' '; 11];
    name[..base.len()].copy_from_slice(base.as_bytes());
    name[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    let e = g
        .find_entry(w, dir, &name, false)?
        .ok_or_else(|| bad(format!("no file {short} in /{}", parent.join("/"))))?;
    let first = cluster_of(&e);
    let len = u32::from_le_bytes(e[28..32].try_into().expect("4 bytes")) as u64;
    let clusters = if first == 0 {
        0
    } else {
        g.chain(w, first)?.len()
    };
    Ok(Extent {
        offset: if first == 0 { 0 } else { g.offset(first) },
        len,
        clusters,
        cluster_bytes: g.0.cluster_bytes,
        first,
        dir,
        name,
    })
}

/// Where the bytes of the file `short` in `parent` lie inside the partition: runs of
/// (offset, length) in file order, adjacent clusters merged, the last one cut at the file's
/// length. Reads only. Lets another thread read a file that no one writes (a seed) with plain
/// reads while the FAT driver writes other files.
pub fn file_runs(w: &mut Window, parent: &[&str], short: &str) -> io::Result<Vec<(u64, u64)>> {
    let ext = file_extent(w, parent, short)?;
    if ext.first == 0 {
        return Ok(Vec::new());
    }
    let g = Geometry::read(w)?;
    let cb = ext.cluster_bytes;
    if (ext.clusters as u64) < ext.len.div_ceil(cb) {
        return Err(bad(format!(
            "{short}: {} bytes in a chain of {} clusters",
            ext.len, ext.clusters
        )));
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut left = ext.len;
    for c in g.chain(w, ext.first)? {
        if left == 0 {
            break;
        }
        let (at, n) = (g.offset(c), cb.min(left));
        match runs.last_mut() {
            Some((s, l)) if *s + *l == at => *l += n,
            _ => runs.push((at, n)),
        }
        left -= n;
    }
    Ok(runs)
}

/// Largest FAT read into memory for [`sharers`] (a 2 GiB ESP with 4 KiB clusters has 2 MiB).
const MAX_FAT_BYTES: u64 = 16 << 20;

/// Everything on the ESP that reaches the cluster of `ext` (a file of one cluster, from
/// [`file_extent`]) besides that file's own directory entry: other directory entries that start
/// there (`GRUB/GRUB.CFG`), and clusters whose FAT entry links to it (another file's chain runs
/// through it). A damaged or hand-made FAT can cross-link files; a sector written in place there
/// would overwrite the other file. Reads only: the FAT and every directory from the root.
pub fn sharers(w: &mut Window, ext: &Extent) -> io::Result<Vec<String>> {
    let g = Geometry::read(w)?;
    let target = ext.first;
    let max = g.0.clusters + 1;
    let fat_len = (max + 1) * 4;
    if fat_len > g.0.fat_bytes || fat_len > MAX_FAT_BYTES {
        return Err(bad(
            "the ESP's FAT is larger than abupdate reads, or does not cover it",
        ));
    }
    let mut bytes = vec![0u8; fat_len as usize];
    read_at(w, g.0.fat_start, &mut bytes)?;
    let fat: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) & MASK)
        .collect();
    let mut out: Vec<String> = (2..=max as u32)
        .filter(|&c| fat[c as usize] == target)
        .map(|c| format!("cluster {c} of another chain links to it"))
        .collect();
    // Every directory, each cluster once (a looping or cross-linked directory is read once).
    let mut seen = vec![false; fat.len()];
    let mut dirs = vec![(g.0.root_cluster, String::new())];
    let mut buf = vec![0u8; g.0.cluster_bytes as usize];
    while let Some((first, path)) = dirs.pop() {
        let mut c = first;
        'chain: while g.0.valid(c) && !seen[c as usize] {
            seen[c as usize] = true;
            read_at(w, g.offset(c), &mut buf)?;
            for e in buf.chunks_exact(ENTRY) {
                if e[0] == 0 {
                    break 'chain;
                }
                let attr = e[11];
                if e[0] == DELETED || attr == ATTR_LFN || attr & ATTR_VOLUME != 0 {
                    continue;
                }
                if e[..11] == DOT || e[..11] == DOTDOT {
                    continue;
                }
                let start = cluster_of(e);
                let name = display_name(&e[..11]);
                let full = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                if start == target && !(first == ext.dir && e[..11] == ext.name) {
                    out.push(format!("{full} starts there"));
                }
                if attr & ATTR_DIR != 0 && start != 0 {
                    dirs.push((start, full));
                }
            }
            c = fat[c as usize];
        }
    }
    Ok(out)
}

/// A short name as `NAME.EXT`.
fn display_name(n: &[u8]) -> String {
    let base = String::from_utf8_lossy(&n[..8]).trim_end().to_string();
    let ext = String::from_utf8_lossy(&n[8..11]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Whether directory `name` can be created in `parent` and then put right: a FAT32 ESP, a
/// short name, and an existing parent. Call before asking fatfs to create it.
pub fn check(w: &mut Window, parent: &[&str], name: &str) -> io::Result<()> {
    let g = Geometry::read(w)?;
    if short_name(name).is_none() {
        return Err(bad(format!(
            "'{name}' is not an 8.3 name; abupdate creates only such directories on the ESP"
        )));
    }
    g.dir(w, parent).map(|_| ())
}

/// Rewrites the first cluster of directory `name` in `parent`, just created by fatfs 0.3.6,
/// to the form the specification requires (see the module comment).
pub fn fix_new(w: &mut Window, parent: &[&str], name: &str) -> io::Result<()> {
    let g = Geometry::read(w)?;
    let parent_cluster = g.dir(w, parent)?;
    let sfn = short_name(name).ok_or_else(|| bad(format!("{name}: not a short name")))?;
    let c = g
        .find(w, parent_cluster, &sfn)?
        .ok_or_else(|| bad(format!("the new directory {name} is not in its parent")))?;
    // `..` of a directory in the root is 0 (the FAT32 root has a cluster, but is not named so).
    let dotdot_cluster = if parent.is_empty() { 0 } else { parent_cluster };
    let mut head = [0u8; 5 * ENTRY];
    read_at(w, g.offset(c), &mut head)?;
    let e = |i: usize| &head[i * ENTRY..(i + 1) * ENTRY];
    let is = |i: usize, n: &[u8; 11]| &e(i)[..11] == n && e(i)[11] & ATTR_DIR != 0;
    let (dot, dotdot) = if e(0)[11] == ATTR_LFN
        && is(1, &DOT)
        && e(2)[11] == ATTR_LFN
        && is(3, &DOTDOT)
        && e(4)[0] == 0
    {
        (e(1).to_vec(), e(3).to_vec())
    } else if is(0, &DOT) && is(1, &DOTDOT) {
        (e(0).to_vec(), e(1).to_vec())
    } else {
        return Err(bad(format!(
            "the new directory {name} on the ESP is not laid out as fatfs 0.3.6 lays it out; \
             left as it is"
        )));
    };
    if cluster_of(&dot) != c {
        return Err(bad(format!(
            "'.' of the new directory {name} is not itself"
        )));
    }
    let mut fixed = [0u8; 4 * ENTRY];
    fixed[..ENTRY].copy_from_slice(&dot);
    fixed[ENTRY..2 * ENTRY].copy_from_slice(&dotdot);
    set_cluster(&mut fixed[ENTRY..2 * ENTRY], dotdot_cluster);
    if is(0, &DOT) {
        // Already in order: only `..` may change; entries 2 and 3 may be in use.
        w.seek(SeekFrom::Start(g.offset(c) + ENTRY as u64))?;
        return w.write_all(&fixed[ENTRY..2 * ENTRY]);
    }
    w.seek(SeekFrom::Start(g.offset(c)))?;
    w.write_all(&fixed)
}

#[cfg(test)]
mod tests {
    use super::short_name;

    #[test]
    fn short_names() {
        assert_eq!(&short_name("b").unwrap(), b"B          ");
        assert_eq!(&short_name("entries").unwrap(), b"ENTRIES    ");
        assert!(short_name("").is_none());
        assert!(short_name("toolongname").is_none());
        assert!(short_name("a.b").is_none());
        assert!(short_name("é").is_none());
    }
}
