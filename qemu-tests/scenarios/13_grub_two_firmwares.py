"""One GRUB disk, two firmwares, one try budget: v1 boots under OVMF (UEFI), the broken v4 is
applied, and its three tries are spent alternately under OVMF, SeaBIOS and OVMF; then, under
SeaBIOS, slot a boots: the tries were counted across both firmwares, not per firmware.

OVMF gets 512 MiB: with 256 MiB GRUB 2.06's `linux` runs out of memory under OVMF
(docs/layout.md); SeaBIOS boots in far less (09_small_machine: 128 MiB).
"""

import re
import time

import harness

TRY = rb"abupdate: booting slot b \(trying, (\d+) tries left after this one\)"


def run(t):
    m = t.machine("1", flavour="grub", firmware=harness.OVMF, memory="512")
    media = [t.bundle("broken")]
    start = time.monotonic()
    m.start(media=media)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("OVMF + GRUB boot to mark-good (v1)", time.monotonic() - start)
    assert m.status_json()["bootLoader"] == "grub"
    m.run("abupdate apply /dev/vdb", timeout=900)

    m.reboot()  # the first try: still under OVMF
    for n, (firmware, left) in enumerate(((None, "2"), (harness.SEABIOS, "1"),
                                          (harness.OVMF, "0"))):
        if firmware is not None:
            m.start(media=media, firmware=firmware)
        assert m.expect(TRY, 300).group(1).decode() == left
        m.expect(rb"ABTEST BROKEN slot=b", 300)
        m.kill()
        env1 = harness.grub_env(m.disk, 1)
        assert env1["ab_b"] == left, env1
        t.step(f"try {n + 1} under {m.firmware_name()}: slot b failed, {left} left in copy 1")

    start = time.monotonic()
    m.start(media=media, firmware=harness.SEABIOS)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("SeaBIOS boot after the tries ran out (back on v1)", time.monotonic() - start)
    assert not re.search(TRY, m.output()), "slot b got a fourth try"
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["lastBootWasFallback"] is True, st
    b = next(s for s in st["slots"] if s["slot"] == "b")
    assert b["state"] == "bad", st
