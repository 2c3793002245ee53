"""Broken update: a bundle whose system init fails. The machine reboots through its tries,
comes back on the previous slot by itself, and `status` reports the fallback and the bad slot.
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 79

import time


def run(t):
    m = t.machine("1")
    m.start(media=[t.bundle("broken")])
    assert m.wait_ready() == ("a", "1")
    m.run("abupdate apply /dev/vdb", timeout=900)
    start = time.monotonic()
    m.reboot()
    # Each try: systemd-boot picks b, its init fails, the kernel panics and reboots (panic=5).
    for attempt in range(3):
        m.expect(rb"ABTEST BROKEN", 300)
        t.step(f"broken system failed on try {attempt + 1}")
    assert m.wait_ready(timeout=300) == ("a", "1")
    t.time("fallback (3 failed tries, back on v1)", time.monotonic() - start)
    st = m.status_json()
    assert st["runningSlot"] == "a", st
    assert st["lastBootWasFallback"] is True, st
    b = next(s for s in st["slots"] if s["slot"] == "b")
    assert b["state"] == "bad", st
