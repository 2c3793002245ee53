//! Times `abbundle::verity::format` (what abbuild runs per image, and what a device would run
//! to build the tree itself) on images of the given sizes in MiB, from a file or made up:
//! `cargo run --release -p abbundle --example verity_bench -- 100 1024` (docs/benchmarks.md).

use std::time::Instant;

fn main() {
    for arg in std::env::args().skip(1) {
        let mib: u64 = arg.parse().expect("sizes in MiB");
        let len = mib << 20;
        // Not zeros: a pattern every block differs in (hashing cost does not depend on it).
        let img: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        let started = Instant::now();
        let (v, area) = abbundle::verity::format(
            |at, buf| {
                buf.copy_from_slice(&img[at as usize..at as usize + buf.len()]);
                Ok(())
            },
            len,
        )
        .unwrap();
        let formatted = started.elapsed();
        let started = Instant::now();
        let mut slot = img;
        slot.extend_from_slice(&area);
        abbundle::verity::check(&v, |at, buf| {
            buf.copy_from_slice(&slot[at as usize..at as usize + buf.len()]);
            Ok(())
        })
        .unwrap();
        println!(
            "{mib} MiB: hash area {} bytes ({:.3}% of the image); format (salt pass + tree) {:.2} s; check {:.2} s",
            area.len(),
            area.len() as f64 * 100.0 / len as f64,
            formatted.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
}
