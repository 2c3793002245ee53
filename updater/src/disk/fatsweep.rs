//! Giving back clusters that no file owns ("lost clusters", in fsck's words).
//!
//! FAT has no journal: a power cut (or a crash) while the FAT driver writes a file can leave
//! clusters marked as allocated in the FAT that no directory entry reaches: fatfs links new
//! clusters into the FAT as it writes, but records the file's first cluster in its directory
//! entry only when the file is flushed. Nothing on the device runs fsck, so each such cut would
//! shrink the ESP for good, until a kernel no longer fits (hostile review, defect 1).
//!
//! [`find`] walks every directory from the root, follows every chain a directory entry starts,
//! and reports each cluster that a FAT copy marks as used but no chain reaches. Reachability is
//! exactly what every reader of the ESP (systemd-boot, GRUB, fatfs) can get to, so freeing the
//! rest cannot take anything from a file anyone can open. [`free`] then writes those entries
//! as free in each FAT copy and marks the FSInfo free count unknown (fatfs recounts it).
//! Only FAT32 (what abbuild makes); other FAT types are left alone.

use std::collections::VecDeque;

use abbundle::fat32::{Geometry, ATTR_DIR, ATTR_LFN, ATTR_VOLUME, BAD, ENTRY, MASK};
use abbundle::layout::ESP_LABEL;
use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::disk::{Disk, Partition};

/// Largest FAT we read into memory (a 2 GiB ESP with 4 KiB clusters has a 2 MiB FAT).
const MAX_FAT_BYTES: u64 = 16 << 20;

/// The ESP's FAT32 layout; `None` if it is not a FAT32 file system we understand: too few
/// clusters for FAT32, a FAT that does not cover them, or more than the partition holds.
fn geometry(disk: &Disk, esp: &Partition) -> Result<Option<Geometry>> {
    let mut bs = [0u8; 512];
    disk.read_at(esp, 0, &mut bs)
        .context("reading the ESP's boot sector")?;
    let Ok(g) = Geometry::parse(&bs) else {
        return Ok(None);
    };
    let covered = (g.fat_bytes / 4).saturating_sub(2);
    if g.clusters < 65525
        || g.clusters > covered
        || g.total_bytes > esp.len
        || g.fat_bytes > MAX_FAT_BYTES
    {
        return Ok(None);
    }
    Ok(Some(g))
}

/// The highest cluster number.
fn max_cluster(g: &Geometry) -> u32 {
    (g.clusters + 1) as u32
}

/// Clusters to give back, per FAT copy.
pub struct Lost {
    geometry: Option<Geometry>,
    /// For each FAT copy, the cluster numbers it marks used that no chain reaches.
    per_fat: Vec<Vec<u32>>,
}

impl Lost {
    /// How many clusters freeing gives back (those lost in the first FAT, the one readers use).
    pub fn clusters(&self) -> u64 {
        self.per_fat.first().map_or(0, |v| v.len() as u64)
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.geometry.as_ref().map_or(0, |g| g.cluster_bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.per_fat.iter().all(Vec::is_empty)
    }
}

/// Finds the lost clusters of the ESP; reads only.
pub fn find(disk: &Disk) -> Result<Lost> {
    let esp = disk.partition(ESP_LABEL)?;
    let Some(g) = geometry(disk, esp)? else {
        warn!("the ESP is not FAT32 as abbuild makes it; not looking for lost clusters");
        return Ok(Lost {
            geometry: None,
            per_fat: Vec::new(),
        });
    };
    let fats: Vec<Vec<u32>> = (0..g.fats)
        .map(|i| read_fat(disk, esp, &g, i))
        .collect::<Result<_>>()?;
    let reached = reachable(disk, esp, &g, &fats[0])?;
    let per_fat = fats
        .iter()
        .map(|fat| {
            (2..=max_cluster(&g))
                .filter(|&c| {
                    let e = fat[c as usize] & MASK;
                    e != 0 && e != BAD && !reached[c as usize]
                })
                .collect()
        })
        .collect();
    Ok(Lost {
        geometry: Some(g),
        per_fat,
    })
}

/// Marks the lost clusters free in every FAT copy, and the FSInfo free count unknown; syncs.
pub fn free(disk: &Disk, lost: &Lost) -> Result<()> {
    let Some(g) = &lost.geometry else {
        return Ok(());
    };
    if lost.is_empty() {
        return Ok(());
    }
    let esp = disk.partition(ESP_LABEL)?;
    for (i, clusters) in lost.per_fat.iter().enumerate() {
        let base = g.fat_start + i as u64 * g.fat_bytes;
        // One read-modify-write per FAT sector touched.
        let mut sector = vec![0u8; g.sector_bytes as usize];
        let mut k = 0;
        while k < clusters.len() {
            let at = clusters[k] as u64 * 4 / g.sector_bytes * g.sector_bytes;
            disk.read_at(esp, base + at, &mut sector)?;
            while k < clusters.len()
                && clusters[k] as u64 * 4 / g.sector_bytes * g.sector_bytes == at
            {
                let o = (clusters[k] as u64 * 4 - at) as usize;
                let keep =
                    u32::from_le_bytes(sector[o..o + 4].try_into().expect("4 bytes")) & !MASK;
                sector[o..o + 4].copy_from_slice(&keep.to_le_bytes());
                k += 1;
            }
            disk.write_at(esp, base + at, &sector)
                .context("writing the ESP's FAT")?;
        }
    }
    // FSInfo: free count unknown (0xFFFFFFFF), so the FAT driver counts the free clusters.
    let mut fsinfo = [0u8; 512];
    disk.read_at(esp, g.fs_info, &mut fsinfo)?;
    if fsinfo[0..4] == *b"RRaA" && fsinfo[484..488] == *b"rrAa" {
        fsinfo[488..492].copy_from_slice(&u32::MAX.to_le_bytes());
        disk.write_at(esp, g.fs_info, &fsinfo)?;
    }
    disk.sync()?;
    info!(
        "gave back {} lost clusters ({} KiB) of the ESP",
        lost.clusters(),
        lost.clusters() * g.cluster_bytes / 1024
    );
    Ok(())
}

fn read_fat(disk: &Disk, esp: &Partition, g: &Geometry, i: u64) -> Result<Vec<u32>> {
    let mut bytes = vec![0u8; ((max_cluster(g) as u64 + 1) * 4) as usize];
    disk.read_at(esp, g.fat_start + i * g.fat_bytes, &mut bytes)
        .context("reading the ESP's FAT")?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Which clusters the chains of the root directory and of every entry below it reach.
fn reachable(disk: &Disk, esp: &Partition, g: &Geometry, fat: &[u32]) -> Result<Vec<bool>> {
    let mut reached = vec![false; max_cluster(g) as usize + 1];
    // Marks a chain; returns its clusters (a loop or a cross-link ends it where it meets
    // clusters already reached, as it would end any reader's walk of it).
    let mut mark = |first: u32| -> Vec<u32> {
        let mut chain = Vec::new();
        let mut c = first;
        while g.valid(c) && !reached[c as usize] {
            reached[c as usize] = true;
            chain.push(c);
            c = fat[c as usize] & MASK;
        }
        chain
    };
    let mut dirs = VecDeque::from([mark(g.root_cluster)]);
    let mut buf = vec![0u8; g.cluster_bytes as usize];
    while let Some(clusters) = dirs.pop_front() {
        'dir: for c in clusters {
            disk.read_at(esp, g.cluster_offset(c), &mut buf)
                .context("reading a directory of the ESP")?;
            for e in buf.chunks_exact(ENTRY) {
                match e[0] {
                    0x00 => break 'dir,
                    0xE5 => continue,
                    b'.' => continue,
                    _ => {}
                }
                let attr = e[11];
                if attr & ATTR_LFN == ATTR_LFN || attr & ATTR_VOLUME != 0 {
                    continue;
                }
                let first = abbundle::fat32::first_cluster(e);
                let chain = mark(first);
                if attr & ATTR_DIR != 0 && !chain.is_empty() {
                    dirs.push_back(chain);
                }
            }
        }
    }
    Ok(reached)
}
