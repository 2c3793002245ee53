"""Two copies of the image on one machine (docs/layout.md, "Per-machine identity"), for each
loader: the GRUB disk under SeaBIOS and the systemd-boot disk under OVMF.

1. First boot with both copies unbooted (the machine's disk first, the copy second): the loader
   cannot tell them apart, abinit says it guesses the first disk, boots, and boot-check gives
   that disk its own ESP, data and disk GUIDs; the copy is not written.
2. The copy is attached first (/dev/vda) and the machine's disk second, still the firmware's
   boot disk: abinit takes the disk the loader names (GRUB's ab.esp=, systemd-boot's
   LoaderDevicePartUUID), not the first one; `abupdate apply` writes v2 to that disk and the
   reboot comes up in its slot b; the copy is still byte for byte the image.
"""

# Wall time under TCG on 2 cores, 2026-12-07.
EXPECTED_SECONDS = 150

import hashlib
import shutil
import time

import harness


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def env(m):
    out = m.run("cat /run/abinit/env")[1]
    return dict(line.split("=", 1) for line in out.split() if "=" in line)


def one(t, flavour, firmware):
    m = t.machine("1", flavour=flavour, firmware=firmware)
    image = harness.partition_guids(m.disk)
    copy = m.disk + ".copy"
    shutil.copy(m.disk, copy)
    copy_sum = sha256(copy)

    t.step(f"{flavour}: first boot with an unbooted copy on the second disk")
    start = time.monotonic()
    m.start(copies=[copy])
    m.expect(rb"several disks have PARTLABEL=root-a \(vda2 vdb2\) and the boot loader's ESP "
             rb"\([0-9a-f-]+\) is on none or several of them: guessing vda2", 300)
    assert m.wait_ready() == ("a", "1")
    t.time(f"{flavour}: first boot", time.monotonic() - start)
    e = env(m)
    assert e["AB_DISK"] == "/dev/vda" and e.get("AB_DISK_GUESSED") == "1", e
    assert b"gave this disk its own GUIDs (first boot)" in m.output(), "no boot-check line"
    m.run("echo mine > /data/keep-me && sync")
    m.stop()
    own = harness.partition_guids(m.disk)
    for label in ("esp", "data", "disk"):
        assert own[label] != image[label] and own[label][14] == "4", (label, own, image)
    for label in ("root-a", "root-b"):
        assert own[label] == image[label], (label, own, image)
    assert sha256(copy) == copy_sum, "the copy was written"

    t.step(f"{flavour}: the copy first (/dev/vda), the machine's disk second: apply, reboot")
    start = time.monotonic()
    m.start(copies=[copy], copies_first=True, media=[t.bundle("qemu-test-2")])
    m.expect(rb"several disks have PARTLABEL=root-a \(vda2 vdb2\): taking vdb2, on the disk "
             rb"the boot loader came from \(ESP " + own["esp"].encode() + rb"\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time(f"{flavour}: boot from the second disk", time.monotonic() - start)
    e = env(m)
    assert e["AB_DISK"] == "/dev/vdb" and "AB_DISK_GUESSED" not in e, e
    assert m.run("cat /data/keep-me")[1].strip() == "mine"
    start = time.monotonic()
    m.run("abupdate apply /dev/vdc", timeout=900)
    t.time(f"{flavour}: apply v2", time.monotonic() - start)
    st = m.status_json()
    assert st["nextBootSlot"] == "b", st
    m.reboot()
    assert m.wait_ready() == ("b", "2")
    e = env(m)
    assert e["AB_DISK"] == "/dev/vdb", e
    assert m.run("cat /data/keep-me")[1].strip() == "mine"
    st = m.status_json()
    assert st["runningSlot"] == "b" and st["lastBootWasFallback"] is False, st
    m.stop()
    assert harness.partition_guids(m.disk) == own, "the GUIDs changed after the first boot"
    assert sha256(copy) == copy_sum, "the copy was written"


def run(t):
    one(t, "grub", harness.SEABIOS)
    one(t, "systemd-boot", harness.OVMF)
