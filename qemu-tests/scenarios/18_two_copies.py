"""Two copies of the image on one machine (docs/layout.md, "Per-machine identity"): the
machine's own disk (the firmware's boot disk, bootindex 0) and a second disk holding a copy.

GRUB disk, SeaBIOS:
1. First boot, both copies unbooted, the machine's disk first: the loader cannot tell them
   apart, abinit says it guesses the first disk (right), boots, and boot-check gives that disk
   its own ESP, data and disk GUIDs; the copy is not written.
2. The copy attached first (/dev/vda): abinit takes the disk GRUB names (ab.esp=), not the
   first one; `abupdate apply` writes v2 to that disk and the reboot boots its slot b; the copy
   is still byte for byte the image.

systemd-boot disk, OVMF, the copy first from the start:
1. First boot: abinit guesses /dev/vda, the copy (wrong): that boot runs from the copy, whose
   boot-check gives the copy its own GUIDs.
2. Next boot: systemd-boot's LoaderDevicePartUUID (the image's ESP GUID) is now on the machine's
   disk only: abinit takes it, its boot-check gives it its own GUIDs; apply + reboot go to it,
   and the copy is not written again.
"""

# Wall time under TCG on 2 cores, 2026-12-07.
EXPECTED_SECONDS = 165

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


GUESS = (rb"several disks have PARTLABEL=root-a \(vda2 vdb2\) and the boot loader's ESP "
         rb"\(([0-9a-f-]+)\) is on none or several of them: guessing vda2")


def taking(slot_part, esp):
    return (rb"several disks have PARTLABEL=root-\w \(vda\d vdb\d\): taking " + slot_part
            + rb", on the disk the boot loader came from \(ESP " + esp.encode() + rb"\)")


def personalised(own, image):
    for label in ("esp", "data", "disk"):
        assert own[label] != image[label] and own[label][14] == "4", (label, own, image)
    for label in ("root-a", "root-b"):
        assert own[label] == image[label], (label, own, image)


def apply_and_reboot(t, m, flavour, own_esp):
    """v2 from /dev/vdc; the reboot must come up in slot b of /dev/vdb, the machine's disk."""
    start = time.monotonic()
    m.run("abupdate apply /dev/vdc", timeout=900)
    t.time(f"{flavour}: apply v2", time.monotonic() - start)
    assert m.status_json()["nextBootSlot"] == "b"
    m.reboot()
    m.expect(taking(rb"vdb3", own_esp), 300)
    assert m.wait_ready() == ("b", "2")
    assert env(m)["AB_DISK"] == "/dev/vdb"
    assert m.run("cat /data/keep-me")[1].strip() == "mine"
    st = m.status_json()
    assert st["runningSlot"] == "b" and st["lastBootWasFallback"] is False, st
    m.stop()


def grub(t):
    m = t.machine("1", flavour="grub", firmware=harness.SEABIOS)
    image = harness.partition_guids(m.disk)
    copy = m.disk + ".copy"
    shutil.copy(m.disk, copy)
    copy_sum = sha256(copy)

    t.step("grub: first boot with an unbooted copy on the second disk")
    start = time.monotonic()
    m.start(copies=[copy])
    assert m.expect(GUESS, 300).group(1).decode() == image["esp"]
    assert m.wait_ready() == ("a", "1")
    t.time("grub: first boot", time.monotonic() - start)
    e = env(m)
    assert e["AB_DISK"] == "/dev/vda" and e.get("AB_DISK_GUESSED") == "1", e
    assert b"gave this disk its own GUIDs (first boot)" in m.output(), "no boot-check line"
    m.run("echo mine > /data/keep-me && sync")
    m.stop()
    own = harness.partition_guids(m.disk)
    personalised(own, image)
    assert sha256(copy) == copy_sum, "the copy was written"

    t.step("grub: the copy first (/dev/vda), the machine's disk second: apply, reboot")
    start = time.monotonic()
    m.start(copies=[copy], copies_first=True, media=[t.bundle("qemu-test-2")])
    m.expect(taking(rb"vdb2", own["esp"]), 300)
    assert m.wait_ready() == ("a", "1")
    t.time("grub: boot from the second disk", time.monotonic() - start)
    e = env(m)
    assert e["AB_DISK"] == "/dev/vdb" and "AB_DISK_GUESSED" not in e, e
    assert m.run("cat /data/keep-me")[1].strip() == "mine"
    apply_and_reboot(t, m, "grub", own["esp"])
    assert harness.partition_guids(m.disk) == own, "the GUIDs changed after the first boot"
    assert sha256(copy) == copy_sum, "the copy was written"


def systemd_boot(t):
    m = t.machine("1", flavour="systemd-boot", firmware=harness.OVMF)
    image = harness.partition_guids(m.disk)
    copy = m.disk + ".copy"
    shutil.copy(m.disk, copy)
    media = [t.bundle("qemu-test-2")]

    t.step("systemd-boot: first boot with an unbooted copy on the FIRST disk: a wrong guess")
    start = time.monotonic()
    m.start(copies=[copy], copies_first=True, media=media)
    assert m.expect(GUESS, 300).group(1).decode() == image["esp"]
    assert m.wait_ready() == ("a", "1")
    t.time("systemd-boot: first boot (from the copy)", time.monotonic() - start)
    e = env(m)
    assert e["AB_DISK"] == "/dev/vda" and e.get("AB_DISK_GUESSED") == "1", e
    m.run("sync")
    m.stop()
    personalised(harness.partition_guids(copy), image)
    assert harness.partition_guids(m.disk) == image, "the machine's disk was written"
    copy_sum = sha256(copy)

    t.step("systemd-boot: the next boot finds the machine's disk: apply, reboot")
    start = time.monotonic()
    m.start(copies=[copy], copies_first=True, media=media)
    m.expect(taking(rb"vdb2", image["esp"]), 300)
    assert m.wait_ready() == ("a", "1")
    t.time("systemd-boot: boot from the second disk", time.monotonic() - start)
    e = env(m)
    assert e["AB_DISK"] == "/dev/vdb" and "AB_DISK_GUESSED" not in e, e
    assert b"gave this disk its own GUIDs (first boot)" in m.output(), "no boot-check line"
    m.run("echo mine > /data/keep-me && sync")
    own = harness.partition_guids(m.disk)
    personalised(own, image)
    apply_and_reboot(t, m, "systemd-boot", own["esp"])
    assert harness.partition_guids(m.disk) == own, "the GUIDs changed after the first boot"
    assert sha256(copy) == copy_sum, "the copy was written after its one boot"


def run(t):
    grub(t)
    systemd_boot(t)
