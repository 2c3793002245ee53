"""Hardware watchdog: a machine with an i6300esb (QEMU resets it when it fires). abinit arms it
(the fixture's abinit.hwwatchdog=20) and the healthy v1's init keeps it fed well past its
timeout; an update whose init hangs after the switch root, without failing and with no health
check or timeout of its own ever running, is reset by the watchdog on each of its three tries,
and GRUB falls back to v1.
"""

# Wall time on 2026-12-07, TCG, shared 2-core machine (the runner starts the longest first).
EXPECTED_SECONDS = 222

import re
import time

import harness

TIMEOUT = 20  # nix/fixture's hwWatchdog
BOOT = rb"abupdate: booting slot ([ab]) \((good|trying, (\d+) tries left after this one)\)"


def run(t):
    m = t.machine("1", flavour="grub", firmware=harness.SEABIOS, memory="256", watchdog=True)
    m.start(media=[t.bundle("hung")])
    m.expect(rb"abinit: hardware watchdog armed", 300)
    assert m.wait_ready(timeout=300) == ("a", "1")
    ready = time.monotonic()
    env = m.run("cat /run/abinit/env")[1]
    assert f"AB_WATCHDOG_TIMEOUT={TIMEOUT}" in env, env
    assert "feeding /dev/watchdog" in m.output().decode(errors="replace")

    t.step("v1 stays up, fed, for more than the watchdog's timeout (the apply of the hung v5)")
    m.run("abupdate apply /dev/vdb", timeout=900)
    left = TIMEOUT + 5 - (time.monotonic() - ready)
    if left > 0:
        time.sleep(left)
    m.run("true")
    boots = len(re.findall(rb"abinit: starting", m.output()))
    assert boots == 1, f"v1 was reset while fed ({boots} boots)"

    t.step("v5's init hangs: the watchdog resets each try, then GRUB falls back to v1")
    start = time.monotonic()
    m.reboot()
    boot = m.expect(BOOT, 300)
    for try_ in (1, 2, 3):
        assert boot.group(1, 3) == (b"b", str(3 - try_).encode()), boot.group(0)
        m.expect(rb"ABTEST HUNG slot=b version=5", 300)
        hung = time.monotonic()
        # The next line of GRUB's comes after the reset.
        boot = m.expect(BOOT, 300)
        t.time(f"try {try_}: init hung, reset by the watchdog after", time.monotonic() - hung)
    assert boot.group(1) == b"a", boot.group(0)
    assert m.wait_ready(timeout=300) == ("a", "1")
    t.time("fallback (3 hung tries, back on v1)", time.monotonic() - start)
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["lastBootWasFallback"] is True, st
    b = next(s for s in st["slots"] if s["slot"] == "b")
    assert b["state"] == "bad", st
