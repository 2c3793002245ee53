"""The GRUB disk made with GRUB 2.12 (build-fixtures.sh: Debian 13's grub-mkimage and modules;
nixpkgs' GRUB is 2.12 or later, the other GRUB scenarios boot Debian 12's 2.06): the boot
counting cycle under OVMF and SeaBIOS, in as few boots as prove it.

v1 boots under OVMF and the broken v4 is applied. Try 1 (OVMF): GRUB saves 2 tries left into
copy 1 and leaves copy 2 at apply's 3. Copy 1 is then zeroed on the host; under SeaBIOS GRUB
reads copy 2 and spends tries 2 and 1 there, copy 1 staying zeroed. Those tries are cut at
GRUB's line (the save comes before it), the last one runs: the broken kernel panics, reboots,
and GRUB boots slot a. Every copy GRUB wrote holds all three variables (2.12's save_env drops
unset ones; grub.cfg only saves one it has just set). mark-good then writes both copies whole.

OVMF gets 256 MiB, where GRUB 2.06's `linux` runs out of memory; 2.12 boots this disk under
OVMF in 192 MiB and not in 184 (docs/benchmarks.md).
"""

# Wall time when it was written (2026-12-07, load ~3.5; the runner starts the longest first).
EXPECTED_SECONDS = 60

import re
import time

import harness

TRY = rb"abupdate: booting slot b \(trying, (\d+) tries left after this one\)"
BROKEN = rb"ABTEST BROKEN slot=b"


def envs(m):
    return harness.grub_env(m.disk, 1), harness.grub_env(m.disk, 2)


def run(t):
    m = t.machine("1-grub212", flavour="grub", firmware=harness.OVMF, memory="256")
    media = [t.bundle("broken")]
    start = time.monotonic()
    m.start(media=media)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("OVMF + GRUB 2.12 boot to mark-good (v1)", time.monotonic() - start)
    assert m.status_json()["bootLoader"] == "grub"
    m.run("abupdate apply /dev/vdb", timeout=900)

    t.step("try 1 under OVMF: spent and saved in copy 1 only")
    m.reboot()
    assert m.expect(TRY, 300).group(1) == b"2"
    m.kill()
    env1, env2 = envs(m)
    assert env1 == {"ab_order": "b a", "ab_a": "good", "ab_b": "2"}, env1
    assert env2 == {"ab_order": "b a", "ab_a": "good", "ab_b": "3"}, env2

    t.step("copy 1 zeroed; under SeaBIOS GRUB counts down copy 2 and leaves copy 1 alone")
    harness.damage_grub_env(m.disk, 1)
    for left in ("2", "1"):
        m.start(media=media, firmware=harness.SEABIOS)
        assert m.expect(TRY, 300).group(1).decode() == left
        m.kill()
        env1, env2 = envs(m)
        assert env1 is None, env1
        assert env2 == {"ab_order": "b a", "ab_a": "good", "ab_b": left}, env2

    t.step("the last try runs: the broken kernel panics, GRUB reboots into slot a")
    start = time.monotonic()
    m.start(media=media, firmware=harness.SEABIOS)
    assert m.expect(TRY, 300).group(1) == b"0"
    m.expect(BROKEN, 300)  # the kernel panics and reboots (panic=5)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("last failed try and fallback to v1 (SeaBIOS)", time.monotonic() - start)
    # No try after the last one (GRUB prints each line on its console and on the serial
    # terminal: dedupe).
    tries = re.findall(TRY, m.output())
    tries = [x for i, x in enumerate(tries) if i == 0 or x != tries[i - 1]]
    assert tries == [b"0"], tries
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["lastBootWasFallback"] is True, st
    assert next(s for s in st["slots"] if s["slot"] == "b")["state"] == "bad", st
    m.kill()
    env1, env2 = envs(m)
    assert env1 is not None and env1 == env2, (env1, env2)
    assert env1["ab_a"] == "good" and env1["ab_b"] == "0", env1
