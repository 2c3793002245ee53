"""GRUB disk under SeaBIOS: v1 boots slot a, bad bundles are refused with nothing changed, v2
from /dev/vdb boots slot b, v3 goes back into slot a (ping-pong); /data survives every reboot.

The legacy-BIOS happy path of a VPS image (images/qemu-test-grub.toml: the same system and
bundles as the systemd-boot scenarios, GRUB's A/B state in two env blocks on the ESP).
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 53

import time

import harness


def slot(status, name):
    return next(s for s in status["slots"] if s["slot"] == name)


def esp_hash(m):
    return m.run("sha256sum /dev/vda1 | cut -c1-64")[1].strip()


def run(t):
    m = t.machine("1", flavour="grub", firmware=harness.SEABIOS)
    media = [t.bundle(n) for n in ("qemu-test-2", "qemu-test-3", "corrupt", "wrong-key")]
    start = time.monotonic()
    m.start(media=media)  # /dev/vdb v2, /dev/vdc v3, /dev/vdd corrupt, /dev/vde wrong key
    m.expect(rb"abupdate: booting slot a \(good\)", 300)  # grub.cfg's line
    assert m.wait_ready() == ("a", "1")
    t.time("SeaBIOS + GRUB boot to mark-good (v1)", time.monotonic() - start)
    st = m.status_json()
    assert st["bootLoader"] == "grub", st
    assert st["runningSlot"] == "a" and st["nextBootSlot"] == "a", st
    assert slot(st, "a")["state"] == "good" and slot(st, "b")["state"] == "empty", st
    m.run("echo precious > /data/keep-me && sync")

    t.step("bad bundles: wrong key, corrupt payload")
    esp = esp_hash(m)
    status, out = m.run("abupdate apply /dev/vde", check=False, timeout=300)
    assert status == 15, f"wrong key: exit {status}\n{out}"  # not signed by a trusted key
    status, out = m.run("abupdate apply /dev/vdd", check=False, timeout=900)
    assert status == 18, f"corrupt payload: exit {status}\n{out}"  # chunk mismatch
    # The corrupt bundle got as far as slot b's partition; the ESP (env blocks, boot files)
    # never changed, so GRUB boots exactly what it did.
    assert esp_hash(m) == esp, "ESP changed by a refused bundle"
    st = m.status_json()
    assert st["nextBootSlot"] == "a" and slot(st, "b")["state"] == "empty", st

    t.step("apply v2 from /dev/vdb, reboot into slot b")
    start = time.monotonic()
    m.run("abupdate apply /dev/vdb", timeout=900)
    t.time("apply v2", time.monotonic() - start)
    st = m.status_json()
    assert st["nextBootSlot"] == "b", st
    assert slot(st, "b")["state"] == "trying" and slot(st, "b")["version"] == "2", st
    start = time.monotonic()
    m.reboot()
    m.expect(rb"abupdate: booting slot b \(trying, 2 tries left after this one\)", 300)
    assert m.wait_ready() == ("b", "2")
    t.time("reboot to mark-good (v2)", time.monotonic() - start)
    st = m.status_json()
    assert st["runningSlot"] == "b" and st["lastBootWasFallback"] is False, st
    assert slot(st, "b")["state"] == "good" and slot(st, "a")["state"] == "good", st
    assert m.run("cat /data/keep-me")[1].strip() == "precious"

    t.step("apply v3 from /dev/vdc into slot a, reboot")
    m.run("abupdate apply /dev/vdc", timeout=900)
    assert m.status_json()["nextBootSlot"] == "a"
    start = time.monotonic()
    m.reboot()
    assert m.wait_ready() == ("a", "3")
    t.time("reboot to mark-good (v3)", time.monotonic() - start)
    st = m.status_json()
    versions = {s["slot"]: (s["version"], s["state"]) for s in st["slots"]}
    assert versions == {"a": ("3", "good"), "b": ("2", "good")}, st
    assert m.run("cat /data/keep-me")[1].strip() == "precious"
