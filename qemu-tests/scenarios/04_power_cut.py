"""Power cut: QEMU is killed (SIGKILL) at several points of an apply: early in the slot write,
late in it, and while the boot files are written to the ESP. Each time the next boot comes up
on the old slot (or on the new one only if the apply had completed), and a final apply then
succeeds and boots."""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 66

import time

# Log lines of `abupdate apply` (non-terminal output: a line at each tenth or so, the steps
# follow the write size) after which the plug is pulled.
CUT_POINTS = [
    ("early in the slot write", rb"slot b: [1-3]\d%"),
    ("late in the slot write", rb"slot b: [7-9]\d%"),
    ("during the ESP write", rb"slot b: \d+ bytes written and read back"),
]


def run(t):
    m = t.machine("1")
    media = [t.bundle("qemu-test-2")]
    m.start(media=media)
    assert m.wait_ready() == ("a", "1")
    for label, pattern in CUT_POINTS:
        t.step(f"pull the plug {label}")
        # Piped through cat: plain progress lines instead of a redrawn bar.
        m.send("abupdate apply /dev/vdb 2>&1 | cat\n")
        # Fail fast, not at a timeout, if the apply ends without the cut point showing.
        hit = m.expect(pattern + rb"|(installed version|abupdate: error)", 300)
        assert not hit.group(1), f"apply finished before the cut point {label!r}"
        m.kill()
        start = time.monotonic()
        m.start(media=media)
        slot, version = m.wait_ready()
        t.time(f"boot after cut {label}", time.monotonic() - start)
        st = m.status_json()
        b = next(s for s in st["slots"] if s["slot"] == "b")
        if (slot, version) == ("b", "2"):
            # Only possible if the apply got as far as writing the entry.
            assert b["state"] == "good" and b["version"] == "2", st
            return
        assert (slot, version) == ("a", "1"), (slot, version)
        assert st["runningSlot"] == "a", st
        # The interrupted slot must not be offered for booting.
        assert st["nextBootSlot"] == "a", st
        assert b["state"] in ("empty", "bad"), st

    t.step("a second, uninterrupted apply")
    m.run("abupdate apply /dev/vdb", timeout=900)
    m.reboot()
    assert m.wait_ready() == ("b", "2")
