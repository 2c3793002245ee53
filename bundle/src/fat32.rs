//! The FAT32 facts the builder and the updater need below the `fatfs` crate (Microsoft's FAT
//! specification): the boot sector's geometry, and where a directory entry keeps its first
//! cluster. Both read and patch the ESP raw in a few places (`abbuild`'s directory fix-up,
//! `abupdate`'s directory creation fix-up, in-place env blocks and lost-cluster sweep); the
//! layout is parsed here once, the I/O stays with each of them.

/// Bytes per directory entry.
pub const ENTRY: usize = 32;
/// Attribute byte (offset 11) of a long-name entry.
pub const ATTR_LFN: u8 = 0x0f;
pub const ATTR_VOLUME: u8 = 0x08;
pub const ATTR_DIR: u8 = 0x10;
/// First name byte of a deleted entry; 0 ends a directory.
pub const DELETED: u8 = 0xe5;
pub const DOT: [u8; 11] = *b".          ";
pub const DOTDOT: [u8; 11] = *b"..         ";
/// FAT32 entries are 28 bits: this masks a FAT entry to its cluster number.
pub const MASK: u32 = 0x0fff_ffff;
/// A bad cluster; this and above (after [`MASK`]) is no next cluster.
pub const BAD: u32 = 0x0fff_fff7;

/// A FAT32 file system's layout, from its boot sector. Byte offsets are from the start of the
/// file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub sector_bytes: u64,
    pub cluster_bytes: u64,
    /// The first FAT.
    pub fat_start: u64,
    /// One FAT copy.
    pub fat_bytes: u64,
    pub fats: u64,
    /// Cluster 2.
    pub data_start: u64,
    pub root_cluster: u32,
    /// Data clusters: 2 ..= clusters + 1 exist.
    pub clusters: u64,
    pub total_bytes: u64,
    /// The FSInfo sector.
    pub fs_info: u64,
}

impl Geometry {
    /// The geometry of a FAT32 boot sector; an error (what is wrong) for anything else,
    /// FAT12/16 included.
    pub fn parse(bs: &[u8; 512]) -> Result<Geometry, &'static str> {
        let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);
        let (bps, spc) = (u16_at(11), bs[13] as u64);
        let (reserved, fats) = (u16_at(14), bs[16] as u64);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) || !spc.is_power_of_two() || fats == 0 {
            return Err("not a FAT boot sector");
        }
        // FAT32: no fixed root directory, no 16-bit FAT size.
        let fat_sectors = u32_at(36) as u64;
        if u16_at(17) != 0 || u16_at(22) != 0 || fat_sectors == 0 {
            return Err("not FAT32");
        }
        let total = match u16_at(19) {
            0 => u32_at(32) as u64,
            small => small,
        };
        let data_sector = reserved + fats * fat_sectors;
        Ok(Geometry {
            sector_bytes: bps,
            cluster_bytes: bps * spc,
            fat_start: reserved * bps,
            fat_bytes: fat_sectors * bps,
            fats,
            data_start: data_sector * bps,
            root_cluster: u32_at(44) & MASK,
            clusters: total.saturating_sub(data_sector) / spc,
            total_bytes: total * bps,
            fs_info: u16_at(48) * bps,
        })
    }

    /// Whether cluster `c` exists.
    pub fn valid(&self, c: u32) -> bool {
        c >= 2 && ((c - 2) as u64) < self.clusters
    }

    /// Where cluster `c` (>= 2) starts.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_bytes
    }
}

/// The first cluster a directory entry names.
pub fn first_cluster(e: &[u8]) -> u32 {
    (u16::from_le_bytes([e[20], e[21]]) as u32) << 16 | u16::from_le_bytes([e[26], e[27]]) as u32
}

/// Sets the first cluster of a directory entry.
pub fn set_first_cluster(e: &mut [u8], c: u32) {
    e[20..22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(c as u16).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot sector with the fields `parse` reads.
    fn boot_sector(bps: u16, spc: u8, fat16_size: u16, fat32_size: u32) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[11..13].copy_from_slice(&bps.to_le_bytes());
        b[13] = spc;
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[16] = 2;
        b[22..24].copy_from_slice(&fat16_size.to_le_bytes());
        b[32..36].copy_from_slice(&(80u32 << 11).to_le_bytes()); // 80 MiB
        b[36..40].copy_from_slice(&fat32_size.to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[48..50].copy_from_slice(&1u16.to_le_bytes());
        b
    }

    #[test]
    fn fat32_geometry() {
        let g = Geometry::parse(&boot_sector(512, 1, 0, 1270)).unwrap();
        assert_eq!(g.fat_start, 32 * 512);
        assert_eq!(g.data_start, (32 + 2 * 1270) * 512);
        assert_eq!(g.clusters, (80 << 11) - (32 + 2 * 1270));
        assert_eq!((g.root_cluster, g.fs_info, g.cluster_bytes), (2, 512, 512));
        assert_eq!(g.cluster_offset(3), g.data_start + 512);
        assert!(g.valid(2) && g.valid(g.clusters as u32 + 1));
        assert!(!g.valid(1) && !g.valid(g.clusters as u32 + 2));
    }

    #[test]
    fn other_boot_sectors_are_refused() {
        assert_eq!(
            Geometry::parse(&boot_sector(512, 1, 200, 0)),
            Err("not FAT32")
        );
        assert_eq!(
            Geometry::parse(&boot_sector(500, 1, 0, 1270)),
            Err("not a FAT boot sector")
        );
        assert_eq!(
            Geometry::parse(&boot_sector(512, 3, 0, 1270)),
            Err("not a FAT boot sector")
        );
    }

    #[test]
    fn entry_clusters() {
        let mut e = [0u8; ENTRY];
        set_first_cluster(&mut e, 0x0123_4567);
        assert_eq!(first_cluster(&e), 0x0123_4567);
        assert_eq!((e[20], e[21], e[26], e[27]), (0x23, 0x01, 0x67, 0x45));
    }
}
