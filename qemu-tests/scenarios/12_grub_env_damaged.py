"""GRUB disk under SeaBIOS, env copy 1 damaged: a broken update still gets a bounded number of
tries, then the good slot boots, and abupdate repairs the damaged copy.

The broken v4 (its init fails at once) is applied; its first try is counted down in copy 1
(3 -> 2). Then, with the power off, copy 1's sector is zeroed on the host image. GRUB reads copy
2, which still holds the update's 3 tries: three more failed boots, then slot a. That is 4
tries in all, within the bound of 2N-1 = 5 that docs/layout.md gives for a damaged copy 1.
"""

import re
import time

import harness

TRY = rb"abupdate: booting slot b \(trying, (\d+) tries left after this one\)"


def run(t):
    m = t.machine("1", flavour="grub", firmware=harness.SEABIOS)
    media = [t.bundle("broken")]
    m.start(media=media)
    assert m.wait_ready() == ("a", "1")
    m.run("echo precious > /data/keep-me && sync")
    m.run("abupdate apply /dev/vdb", timeout=900)

    t.step("first try of the broken slot b, counted in copy 1")
    m.reboot()
    assert m.expect(TRY, 300).group(1) == b"2"
    m.expect(rb"ABTEST BROKEN slot=b", 300)
    m.kill()
    env1, env2 = harness.grub_env(m.disk, 1), harness.grub_env(m.disk, 2)
    assert env1 == {"ab_order": "b a", "ab_a": "good", "ab_b": "2"}, env1
    assert env2 == {"ab_order": "b a", "ab_a": "good", "ab_b": "3"}, env2

    t.step("zero env copy 1 on the host; GRUB counts down copy 2")
    harness.damage_grub_env(m.disk, 1)
    assert harness.grub_env(m.disk, 1) is None
    start = time.monotonic()
    m.start(media=media)
    for left in (b"2", b"1", b"0"):
        assert m.expect(TRY, 300).group(1) == left
        m.expect(rb"ABTEST BROKEN slot=b", 300)  # the kernel panics and reboots (panic=5)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("3 more failed tries from copy 2, back on v1", time.monotonic() - start)
    tries = re.findall(TRY, m.output())
    assert tries == [b"2", b"1", b"0"], tries  # since this power-on: no fourth try
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["lastBootWasFallback"] is True, st
    b = next(s for s in st["slots"] if s["slot"] == "b")
    assert b["state"] == "bad", st
    assert m.run("cat /data/keep-me")[1].strip() == "precious"

    # mark-good (run at boot) wrote the state again: copy 1 is whole and equal to copy 2.
    m.kill()
    env1, env2 = harness.grub_env(m.disk, 1), harness.grub_env(m.disk, 2)
    assert env1 is not None and env1 == env2, (env1, env2)
    assert env1["ab_a"] == "good" and env1["ab_b"] == "0", env1
