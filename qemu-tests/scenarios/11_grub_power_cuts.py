"""GRUB disk under SeaBIOS, power cuts: early in the slot write, between the boot files and the
env write, between apply's env copy 1 and copy 2, right after GRUB's save_env of a try at boot,
between mark-good's env copies, and after apply's first env write (the target slot set to
none). After every cut the machine boots the old or the new system, `status` agrees, /data is
intact; a final uncut apply boots.

Apply's lines on a GRUB disk (piped, so log lines, not a progress bar): `slot X: NN%`,
`slot X: ... written and read back`, `slot X: kernel, initrd and info.json written to the ESP`,
then `wrote grub/env1: ...` and `wrote grub/env2: ...` (each copy synced and read back first).
grub.cfg prints `abupdate: booting slot X (trying, N tries left after this one)` once its
save_env of the spent try has succeeded, just before it loads the kernel.
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 91

import time

import harness

MEDIA = {"2": "/dev/vdb", "3": "/dev/vdc"}


def slot(status, name):
    return next(s for s in status["slots"] if s["slot"] == name)


class Run:
    def __init__(self, t):
        self.t = t
        self.m = t.machine("1", flavour="grub", firmware=harness.SEABIOS)
        self.media = [t.bundle("qemu-test-2"), t.bundle("qemu-test-3")]
        self.running = ("a", "1")
        self.cuts = 0
        self.markers = 0  # files in /data/cuts: one before each cut from the shell

    def target(self):
        """(slot, version, medium) of the next apply: v2 over v1 or v3, v3 over v2."""
        s, v = self.running
        nv = "3" if v == "2" else "2"
        return ("b" if s == "a" else "a"), nv, MEDIA[nv]

    def marker(self):
        self.markers += 1
        n = self.markers
        self.m.run(f"mkdir -p /data/cuts && echo {n} > /data/cuts/{n} && sync")

    def apply_and_cut(self, label, pattern):
        """Starts an apply of the next version, pulls the plug at `pattern` in its output."""
        self.t.step(f"cut {self.cuts + 1}: {label}")
        self.cuts += 1
        self.marker()
        _, _, medium = self.target()
        self.m.send(f"abupdate apply {medium} 2>&1 | cat\n")
        hit = self.m.expect(pattern + rb"|(installed version|abupdate: error)", 600)
        assert not hit.group(1), f"apply finished before the cut point {label!r}"
        self.m.kill()

    def check_booted(self, booted, allowed, label, start):
        """After READY: the system is one that could be running, status agrees, data kept."""
        assert booted in allowed, f"after {label!r}: booted {booted}, allowed {allowed}"
        self.t.time(f"boot after {label}", time.monotonic() - start)
        st = self.m.status_json()
        assert st["bootLoader"] == "grub", st
        assert st["runningSlot"] == booted[0], st
        assert slot(st, booted[0])["state"] == "good", st
        assert slot(st, booted[0])["version"] == booted[1], st
        assert st["nextBootSlot"] == booted[0], st
        out = self.m.run("cat /data/keep-me; ls /data/cuts | wc -l")[1].split()
        assert out == ["precious", str(self.markers)], out
        self.running = booted
        return st

    def boot(self, allowed, label):
        start = time.monotonic()
        self.m.start(media=self.media)
        return self.check_booted(self.m.wait_ready(), allowed, f"cut {label}", start)


def run(t):
    r = Run(t)
    m = r.m
    m.start(media=r.media)
    assert m.wait_ready() == ("a", "1")
    m.run("echo precious > /data/keep-me && sync")

    # Cut 1: the slot is `none` and half written: the old system, the target still empty.
    target, version, _ = r.target()
    r.apply_and_cut("early in the slot write", f"slot {target}: [1-3]\\d%".encode())
    st = r.boot({r.running}, "early in the slot write")
    assert slot(st, target)["state"] == "empty", st

    # Cut 2: boot files written, cmdline.cfg and the env copies to come: still the old one.
    r.apply_and_cut("after the boot files, before the env write",
                    f"slot {target}: kernel, initrd and info.json written".encode())
    st = r.boot({r.running}, "after the boot files")
    assert slot(st, target)["state"] == "empty", st

    # Cut 3: copy 1 holds the new state (the line comes after its sync and read-back), copy 2
    # the old one, or the new one if its write got through. GRUB reads copy 1: the new slot,
    # as a try. Cut 4 comes right after GRUB saved that try, before the kernel loads.
    r.apply_and_cut("between env copy 1 and copy 2",
                    f"wrote grub/env1: ab_order=\"{target} ".encode())
    env1 = harness.grub_env(m.disk, 1)
    assert env1["ab_order"].startswith(target) and env1[f"ab_{target}"] == "3", env1
    new = (target, version)
    m.start(media=r.media)
    m.expect(f"abupdate: booting slot {target} \\(trying, 2 tries left".encode(), 300)
    r.cuts += 1
    t.step(f"cut {r.cuts}: right after GRUB's save_env of slot {target}'s first try")
    m.kill()
    env1 = harness.grub_env(m.disk, 1)
    assert env1[f"ab_{target}"] == "2", env1  # the spent try is on the disk
    m.start(media=r.media)
    m.expect(f"abupdate: booting slot {target} \\(trying, 1 tries left".encode(), 300)
    # Cut 5: between mark-good's two env writes: copy 1 says good, copy 2 is as apply left it.
    m.expect(f"wrote grub/env1: [^\\n]*ab_{target}=good".encode(), 300)
    r.cuts += 1
    t.step(f"cut {r.cuts}: between mark-good's env copy 1 and copy 2")
    m.kill()
    start = time.monotonic()
    m.start(media=r.media)
    m.expect(f"abupdate: booting slot {target} \\(good\\)".encode(), 300)
    r.check_booted(m.wait_ready(), {new}, "cut between mark-good's env copies", start)

    # Cut 6: the other slot is good now: apply sets it to `none` first (copy 1, then copy 2);
    # cut after copy 1.
    target, version, medium = r.target()
    assert slot(m.status_json(), target)["state"] == "good"
    r.apply_and_cut("after apply's first env write (target none in copy 1)",
                    f"wrote grub/env1: [^\\n]*ab_{target}=none".encode())
    st = r.boot({r.running}, "after the first env write")
    assert slot(st, target)["state"] == "empty", st

    t.step(f"uncut apply of v{version} into slot {target}")
    m.run(f"abupdate apply {medium}", timeout=900)
    m.reboot()
    start = time.monotonic()
    r.check_booted(m.wait_ready(), {(target, version)}, "the final apply", start)
    t.step(f"{r.cuts} cuts, every boot old or new, /data intact")
