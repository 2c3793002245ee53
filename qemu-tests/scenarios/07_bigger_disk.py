"""A bigger disk: the image on a disk 256 MiB larger than it was built for, as a VPS provider
gives. The first boot's boot-check grows the data partition to the disk's end, the next boot's
initrd grows its file system, and what was on /data is kept."""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 27

import os


def data_kib(m):
    """Size of the /data file system in KiB (busybox df)."""
    out = m.run("df -k /data | tail -n 1")[1].split()
    return int(out[1])


def run(t):
    m = t.machine("1")
    with open(m.disk, "r+b") as f:
        f.truncate(os.path.getsize(m.disk) + (256 << 20))
    m.start()
    assert m.wait_ready() == ("a", "1")
    before = data_kib(m)
    m.run("echo precious > /data/keep-me && sync")
    log = m.run("cat /sys/class/block/vda4/size; abupdate status")[1]
    t.step(f"after the first boot: data file system {before} KiB")
    m.reboot()
    assert m.wait_ready() == ("a", "1")
    after = data_kib(m)
    t.step(f"after the second boot: data file system {after} KiB")
    assert after > before + 200 * 1024, (before, after, log)
    assert m.run("cat /data/keep-me")[1].strip() == "precious"
    # The partition table is whole (backup at the disk's end) and the next boot-check has
    # nothing left to do.
    out = m.run("abupdate boot-check 2>&1")[1]
    assert "grew" not in out, out
