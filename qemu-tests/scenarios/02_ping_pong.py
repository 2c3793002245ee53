"""Ping-pong: v2 goes into slot b, then v3 into slot a, and each boots in turn."""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 45

import time


def run(t):
    m = t.machine("1")
    m.start(media=[t.bundle("qemu-test-2"), t.bundle("qemu-test-3")])
    assert m.wait_ready() == ("a", "1")
    m.run("abupdate apply /dev/vdb", timeout=900)
    m.reboot()
    assert m.wait_ready() == ("b", "2")

    t.step("apply v3 from /dev/vdc into slot a")
    start = time.monotonic()
    m.run("abupdate apply /dev/vdc", timeout=900)
    t.time("apply v3", time.monotonic() - start)
    st = m.status_json()
    assert st["nextBootSlot"] == "a", st
    m.reboot()
    assert m.wait_ready() == ("a", "3")
    st = m.status_json()
    assert st["runningSlot"] == "a", st
    versions = {s["slot"]: (s["version"], s["state"]) for s in st["slots"]}
    assert versions == {"a": ("3", "good"), "b": ("2", "good")}, st
