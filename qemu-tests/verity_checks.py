"""The dm-verity checks of scenarios 19_verity_* (docs/updater.md, "A damaged slot"), for one
loader: systemd-boot under OVMF, or the GRUB disk under SeaBIOS. Both slots get a hash tree
and abinit.verity= on their command line on the powered-off disk (harness.add_verity: a
test-only stand-in for the builder's tree, kept as it is where a slot has one already).
v2 is applied into slot b, then:
  (2) a byte of slot b's image flipped while b is still being tried (systemd-boot), or a block
      of b's hash tree damaged (GRUB: check 3): b's initrd finds it before mounting anything,
      `mark-corrupt` marks b bad, the machine comes back on slot a;
  (1) b booted and marked good, then a byte of its image flipped on the powered-off disk: the
      same, although b was good; a later boot stays on a (`again`).
Never a line of slot b's system after the damage; `status` names slot b as corrupt; a marker
on /data survives everything.
"""

import os
import re
import shutil
import time

import harness

CORRUPT = rb"abinit: verity: slot b is CORRUPT: ([^\r\n]*)"


def slot(status, name):
    return next(s for s in status["slots"] if s["slot"] == name)


def power_off(m):
    m.run("sync")
    m.kill()


def damaged_boot(t, m, media, what):
    """Boots a disk whose slot b is damaged and boots next: b's initrd must find it, mark b bad
    and reboot, and slot a must come up, without a line of b's system in between."""
    start = time.monotonic()
    m.start(media=media)
    found = m.expect(CORRUPT, 300).group(1).decode()
    t.step(f"{what}: b's initrd found it: {found}")
    since = m.offset()
    m.expect(rb"abinit: verity: slot b marked bad; rebooting into slot a", 60)
    assert m.wait_ready() == ("a", "1")
    t.time(f"{what}: found, marked bad, back on slot a", time.monotonic() - start)
    out = m.output(since)
    assert b"switching to slot b" not in out and b"READY slot=b" not in out, \
        "slot b's system ran after its damage was found"
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["nextBootSlot"] == "a", st
    b = slot(st, "b")
    assert b["state"] == "bad", st
    assert b["corrupt"] and b["corrupt"]["markedBad"] is True, st
    assert b["corrupt"]["version"] == "2", st
    assert re.search(r"(data|metadata) block \d+ is corrupted", b["corrupt"]["detail"]), st
    _, human = m.run("abupdate status")
    assert "slot b was found CORRUPT" in human, human
    _, data = m.run("cat /data/verity-marker")
    assert "kept" in data, data
    return found


def flavour(t, name, firmware, again=False):
    """Checks (2) or (3), then (1), on a machine of disk flavour `name`; `again`: one more
    boot afterwards, which must stay on slot a."""
    m = t.machine("1", flavour=name, firmware=firmware)
    harness.add_verity(m.disk, "a", t.workdir)
    media = [t.bundle("qemu-test-2")]
    start = time.monotonic()
    m.start(media=media)
    assert m.wait_ready() == ("a", "1")
    t.time(f"{name}: v1 boot with verity", time.monotonic() - start)
    out = m.output()
    assert b"abinit: verity: slot a matches its root hash" in out, "slot a was not checked"
    assert slot(m.status_json(), "a")["corrupt"] is None
    m.run("echo kept > /data/verity-marker")
    m.run("abupdate apply /dev/vdb", timeout=900)
    power_off(m)
    value = harness.add_verity(m.disk, "b", t.workdir)
    _, _, blocks, hash_offset = harness.verity_params(value)
    trying = os.path.join(t.workdir, f"{name}-b-trying.img")
    shutil.copy(m.disk, trying)

    # (2) / (3): slot b damaged while it is being tried.
    if name == "grub":
        # A block of the hash tree's lowest level (the second block after the superblock).
        harness.flip_byte(m.disk, "root-b", hash_offset + 2 * 4096 + 100)
        damaged_boot(t, m, media, f"{name}: hash tree block of trying slot b damaged")
    else:
        harness.flip_byte(m.disk, "root-b", (blocks // 2) * 4096 + 123)
        damaged_boot(t, m, media, f"{name}: byte of trying slot b flipped")
    power_off(m)

    # (1): the same after b was marked good.
    shutil.copy(trying, m.disk)
    m.start(media=media)
    assert m.wait_ready() == ("b", "2")
    assert slot(m.status_json(), "b")["state"] == "good"
    t.step(f"{name}: v2 up and good in slot b")
    power_off(m)
    harness.flip_byte(m.disk, "root-b", (blocks * 3 // 4) * 4096 + 7)
    damaged_boot(t, m, media, f"{name}: byte of good slot b flipped")
    if again:
        # The damaged slot does not run again: the next boot goes straight to a.
        since = m.offset()
        m.reboot()
        assert m.wait_ready() == ("a", "1")
        assert b"slot b is CORRUPT" not in m.output(since), "slot b was booted again"
        t.step(f"{name}: the next boot stays on slot a")
    m.stop()
