"""One GRUB disk, two firmwares, one try budget, env copy 1 damaged: a broken update's tries
are counted across OVMF and SeaBIOS, and with copy 1 lost it still gets a bounded number.

v1 boots under OVMF (UEFI). The broken v4 (its init fails at once) is applied; its first try
is spent under OVMF, its second under SeaBIOS, both counted down in copy 1 (3 -> 2 -> 1) while
copy 2 keeps apply's 3. Then, with the power off, copy 1's sector is zeroed on the host image.
GRUB reads copy 2 and spends its three tries (2, 1, 0 left), then boots slot a: 5 tries in all,
exactly the bound of 2N-1 that docs/layout.md gives for a damaged copy 1, and no more. mark-good
then writes copy 1 whole again.

OVMF gets 512 MiB: with 256 MiB GRUB 2.06's `linux` runs out of memory under OVMF
(docs/layout.md); SeaBIOS boots in far less (09_small_machine: 128 MiB).
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 117

import re
import time

import harness

TRY = rb"abupdate: booting slot b \(trying, (\d+) tries left after this one\)"
BROKEN = rb"ABTEST BROKEN slot=b"


def run(t):
    m = t.machine("1", flavour="grub", firmware=harness.OVMF, memory="512")
    media = [t.bundle("broken")]
    start = time.monotonic()
    m.start(media=media)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("OVMF + GRUB boot to mark-good (v1)", time.monotonic() - start)
    assert m.status_json()["bootLoader"] == "grub"
    m.run("echo precious > /data/keep-me && sync")
    m.run("abupdate apply /dev/vdb", timeout=900)

    m.reboot()  # the first try: still under OVMF
    for n, (firmware, left) in enumerate(((None, "2"), (harness.SEABIOS, "1"))):
        if firmware is not None:
            m.start(media=media, firmware=firmware)
        assert m.expect(TRY, 300).group(1).decode() == left
        m.expect(BROKEN, 300)
        m.kill()
        env1, env2 = harness.grub_env(m.disk, 1), harness.grub_env(m.disk, 2)
        assert env1 == {"ab_order": "b a", "ab_a": "good", "ab_b": left}, env1
        assert env2 == {"ab_order": "b a", "ab_a": "good", "ab_b": "3"}, env2
        t.step(f"try {n + 1} under {m.firmware_name()}: slot b failed, {left} left in copy 1")

    t.step("zero env copy 1 on the host; GRUB counts down copy 2 (OVMF)")
    harness.damage_grub_env(m.disk, 1)
    assert harness.grub_env(m.disk, 1) is None
    start = time.monotonic()
    m.start(media=media, firmware=harness.OVMF)
    for left in (b"2", b"1", b"0"):
        assert m.expect(TRY, 300).group(1) == left
        m.expect(BROKEN, 300)  # the kernel panics and reboots (panic=5)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("3 more failed tries from copy 2, back on v1", time.monotonic() - start)
    # Since this power-on: no sixth try. (GRUB prints each line on its console and on the
    # serial terminal, which under OVMF and SeaBIOS both reach the serial port: dedupe.)
    tries = re.findall(TRY, m.output())
    tries = [x for i, x in enumerate(tries) if i == 0 or x != tries[i - 1]]
    assert tries == [b"2", b"1", b"0"], tries
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["lastBootWasFallback"] is True, st
    b = next(s for s in st["slots"] if s["slot"] == "b")
    assert b["state"] == "bad", st
    assert m.run("cat /data/keep-me")[1].strip() == "precious"

    t.step("the same disk under SeaBIOS: slot a, no try for b")
    m.kill()
    # mark-good (run at boot) wrote the state again: copy 1 is whole and equal to copy 2.
    env1, env2 = harness.grub_env(m.disk, 1), harness.grub_env(m.disk, 2)
    assert env1 is not None and env1 == env2, (env1, env2)
    assert env1["ab_a"] == "good" and env1["ab_b"] == "0", env1
    start = time.monotonic()
    m.start(media=media, firmware=harness.SEABIOS)
    m.expect(rb"abupdate: booting slot a \(good\)", 300)
    assert m.wait_ready() == ("a", "1")
    t.time("SeaBIOS boot after the tries ran out (v1)", time.monotonic() - start)
    assert not re.search(TRY, m.output()), "slot b got another try"
