"""Happy path: v1 boots from slot a, v2 is applied from a second disk and boots from slot b.

After the reboot the health check passes, `mark-good` (run by the system's init) drops the
boot counter, and `status --json` says slot b is running and good.
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 36

import time


def slot(status, name):
    return next(s for s in status["slots"] if s["slot"] == name)


def run(t):
    m = t.machine("1")
    start = time.monotonic()
    m.start(media=[t.bundle("qemu-test-2")])
    assert m.wait_ready() == ("a", "1")
    t.time("boot to mark-good (v1)", time.monotonic() - start)
    st = m.status_json()
    assert st["runningSlot"] == "a", st
    assert slot(st, "a")["state"] == "good", st

    t.step("apply v2 from /dev/vdb")
    start = time.monotonic()
    m.run("abupdate apply /dev/vdb", timeout=900)
    t.time("apply v2", time.monotonic() - start)
    st = m.status_json()
    assert st["nextBootSlot"] == "b", st
    assert slot(st, "b")["state"] == "trying", st
    assert slot(st, "b")["version"] == "2", st

    t.step("reboot into v2")
    start = time.monotonic()
    m.reboot()
    assert m.wait_ready() == ("b", "2")
    t.time("reboot to mark-good (v2)", time.monotonic() - start)
    st = m.status_json()
    assert st["runningSlot"] == "b", st
    assert slot(st, "b")["state"] == "good", st
    assert slot(st, "b")["entries"] == ["slot-b.conf"], st
    assert slot(st, "a")["state"] == "good", st
    assert st["lastBootWasFallback"] is False, st
