//! FAT timestamps for files on the ESP, shared by the builder (which writes the first ESP with
//! the bundle's creation time, for reproducible images) and the updater (which writes with the
//! current time). Pure arithmetic: no FAT code lives here.
//!
//! Files must carry a valid date: UEFI's FAT driver rejects a rename (SetInfo) of a file whose
//! date is zero (month 0, day 0), and that rename is how systemd-boot counts boot tries.

/// A calendar date and time of day in UTC, as FAT stores it (1980..=2107, 2-second steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatTime {
    pub year: u16,
    pub month: u16,
    pub day: u16,
    pub hour: u16,
    pub min: u16,
    pub sec: u16,
}

/// Converts seconds since the Unix epoch to a FAT time, clamped to FAT's range.
pub fn from_epoch(epoch: u64) -> FatTime {
    const MIN: u64 = 315_532_800; // 1980-01-01 00:00:00
    const MAX: u64 = 4_354_819_198; // 2107-12-31 23:59:58
    let t = epoch.clamp(MIN, MAX);
    let (days, secs) = (t / 86_400, t % 86_400);
    // Walk whole years, then months: at most 128 + 12 steps, and obviously right.
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let (mut year, mut left) = (1970u64, days);
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if left < len {
            break;
        }
        left -= len;
        year += 1;
    }
    let month_len = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while left >= month_len[month] {
        left -= month_len[month];
        month += 1;
    }
    FatTime {
        year: year as u16,
        month: month as u16 + 1,
        day: left as u16 + 1,
        hour: (secs / 3600) as u16,
        min: (secs / 60 % 60) as u16,
        sec: (secs % 60) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(y: u16, mo: u16, d: u16, h: u16, mi: u16, s: u16) -> FatTime {
        FatTime {
            year: y,
            month: mo,
            day: d,
            hour: h,
            min: mi,
            sec: s,
        }
    }

    #[test]
    fn known_dates() {
        // `date -u -d @N`
        assert_eq!(from_epoch(1_700_000_000), t(2023, 11, 14, 22, 13, 20));
        assert_eq!(from_epoch(951_782_400), t(2000, 2, 29, 0, 0, 0));
        assert_eq!(from_epoch(1_795_386_074), t(2026, 11, 22, 22, 21, 14));
        assert_eq!(from_epoch(0), t(1980, 1, 1, 0, 0, 0));
        assert_eq!(from_epoch(u64::MAX), t(2107, 12, 31, 23, 59, 58));
    }
}
