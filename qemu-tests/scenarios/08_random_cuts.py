"""Random power cuts: 20 cuts at random points of apply, first boot, mark-good, rollback, growth.

The plug is pulled at N random points (20 unless ABTEST_CUTS or `run.py --cuts N` says
otherwise) across apply (slot and ESP writes), the first boot of the new slot, mark-good,
rollback, and the growth of the data partition (boot-check) and of its file system (initrd).
After every cut the machine must boot the old or the new system, and every marker file written
to /data before a cut must be there.

The seed is printed; ABTEST_SEED=S replays it. Each kind of step first runs once uncut to
measure how long it takes; cut k then falls at a fraction (from the seed and k) of that window
after the step's command is sent or its first serial line is printed. One machine for the whole
run: a cut is followed by a power-on, never by a new disk; growth steps make the disk file
32 MiB larger while the machine is off.
"""

import os
import random
import time

GROW_MIB = 32  # the initrd grows the file system when its partition is >= 8 MiB larger
PHASES = ["apply", "first-boot", "mark-good", "rollback", "grow-partition", "grow-fs"]
MEDIA = {"2": "/dev/vdb", "3": "/dev/vdc"}  # which medium holds which version's bundle
# Serial lines that start and end the steps timed inside a boot (nix/fixture, nix/initrd).
BOOTCHECK = (rb"abtest: version \S+, slot", rb"abtest: abupdate boot-check exited")
MARKGOOD = (rb"abtest: health check passed", rb"abtest: abupdate mark-good exited")
GROWFS = (rb"abinit: growing the data filesystem", rb"abtest: init of version")
GREW_PARTITION = rb"grew the data partition"
READY = rb"ABTEST READY slot=[ab] version=\S+"


def other(slot):
    return "b" if slot == "a" else "a"


def slot_info(status, name):
    return next(s for s in status["slots"] if s["slot"] == name)


class Cutter:
    def __init__(self, t, seed):
        self.t = t
        self.seed = seed
        self.m = t.machine("1")
        self.media = [t.bundle("qemu-test-2"), t.bundle("qemu-test-3")]
        self.markers = []  # contents of /data/cuts/*, in order
        self.windows = {}  # phase -> seconds, measured uncut
        self.state = None  # (slot, version) running
        self.status = None
        self.fs_pending = False  # the data partition is larger than its file system
        self.since = 0  # output offset where the current boot starts
        self.counts = {p: 0 for p in PHASES}
        self.outcomes = {"old": 0, "new": 0}

    # --- booting and checking ----------------------------------------------------------

    def verified_boot(self, allowed, label):
        """Waits for READY and checks slot, version, status and the markers."""
        slot, version = self.m.wait_ready(timeout=900)
        assert (slot, version) in allowed, \
            f"{label}: booted slot {slot} version {version}, expected one of {sorted(allowed)}"
        st = self.m.status_json()
        assert st["runningSlot"] == slot, (label, st)
        mine = slot_info(st, slot)
        assert mine["version"] == version and mine["state"] == "good", (label, st)
        if self.markers:
            found = self.m.run("cat /data/cuts/*")[1].split()
            assert found == self.markers, f"{label}: /data/cuts holds {found}, wrote {self.markers}"
        self.state, self.status = (slot, version), st
        return slot, version

    def start(self):
        self.m.start(media=self.media)
        self.since = 0

    def reboot(self):
        self.since = self.m.offset()
        self.m.reboot()

    def seen(self, pattern):
        return self.m.seen(pattern, self.since)

    def power_off(self):
        """An orderly power-off for a disk change: everything synced, then the plug."""
        self.m.run("sync")
        self.m.kill()

    def grow_disk(self):
        with open(self.m.disk, "r+b") as f:
            f.truncate(os.path.getsize(self.m.disk) + (GROW_MIB << 20))

    def apply_command(self):
        """The next update for the running version: 1 -> 2, 2 -> 3, 3 -> 2 (a downgrade)."""
        running = self.state[1]
        new = {"1": "2", "2": "3", "3": "2"}[running]
        flag = " --allow-downgrade" if new < running else ""
        return new, f"abupdate apply{flag} {MEDIA[new]}"

    def apply_uncut(self):
        new, cmd = self.apply_command()
        start = time.monotonic()
        self.m.run(cmd, timeout=900)
        return new, time.monotonic() - start

    def span(self, marks):
        start, end = self.seen(marks[0]), self.seen(marks[1])
        assert start is not None and end is not None, f"serial lines {marks} not seen"
        return end - start

    # --- calibration: each step once, uncut --------------------------------------------

    def calibrate(self):
        t, m = self.t, self.m
        self.start()
        self.verified_boot({("a", "1")}, "first boot")
        new, self.windows["apply"] = self.apply_uncut()
        start = time.monotonic()
        self.reboot()
        self.verified_boot({("b", new)}, "calibration: first boot of the new slot")
        self.windows["first-boot"] = self.seen(READY) - start
        self.windows["mark-good"] = self.span(MARKGOOD)
        start = time.monotonic()
        m.run("abupdate rollback")
        self.windows["rollback"] = time.monotonic() - start
        self.power_off()
        self.grow_disk()
        self.start()
        self.verified_boot({("a", "1")}, "calibration: rollback, then a bigger disk")
        assert self.seen(GREW_PARTITION), "boot-check did not grow the data partition"
        self.windows["grow-partition"] = self.span(BOOTCHECK)
        self.reboot()
        self.verified_boot({("a", "1")}, "calibration: file system growth")
        self.windows["grow-fs"] = self.span(GROWFS)
        for phase in PHASES:
            t.time(f"window {phase} (uncut)", self.windows[phase])

    # --- one cut ------------------------------------------------------------------------

    def mark(self, k):
        token = f"cut{k:04d}-seed{self.seed}"
        self.m.run(f"mkdir -p /data/cuts && echo {token} > /data/cuts/{k:04d} && sync")
        self.markers.append(token)

    def pull(self, k, phase, frac, allowed, old):
        """Sleeps frac of the phase's window (plus 10% so its end is covered), cuts, boots."""
        delay = frac * self.windows[phase] * 1.1
        time.sleep(delay)
        self.m.kill()
        self.start()
        start = time.monotonic()
        got = self.verified_boot(allowed, f"cut {k} ({phase}, {delay:.2f} s)")
        self.t.step(f"cut {k}: {phase} at +{delay:.2f} s -> slot {got[0]} version {got[1]} "
                    f"({time.monotonic() - start:.0f} s to READY)")
        self.counts[phase] += 1
        self.outcomes["old" if got == old else "new"] += 1

    def cut(self, k):
        phase = PHASES[k % len(PHASES)]
        frac = random.Random(f"{self.seed}/{k}").random()
        m = self.m
        slot, version = self.state
        if phase == "apply":
            new, cmd = self.apply_command()
            self.mark(k)
            # Piped through cat: progress lines, no redrawn bar.
            m.send(f"{cmd} 2>&1 | cat\n")
            self.pull(k, phase, frac, {(slot, version), (other(slot), new)}, (slot, version))
        elif phase in ("first-boot", "mark-good"):
            new, _ = self.apply_uncut()
            self.mark(k)
            self.reboot()
            if phase == "mark-good":
                m.expect(MARKGOOD[0], 900)
            self.pull(k, phase, frac, {(slot, version), (other(slot), new)}, (slot, version))
        elif phase == "rollback":
            if slot_info(self.status, other(slot))["state"] != "good":
                new, _ = self.apply_uncut()
                self.reboot()
                self.verified_boot({(other(slot), new)}, f"cut {k}: before the rollback")
                slot, version = self.state
            back = (other(slot), slot_info(self.status, other(slot))["version"])
            self.mark(k)
            m.send("abupdate rollback\n")
            self.pull(k, phase, frac, {(slot, version), back}, (slot, version))
        elif phase == "grow-partition":
            nxt = self.status["nextBootSlot"]
            allowed = {(slot, version), (nxt, slot_info(self.status, nxt)["version"])}
            self.mark(k)
            self.power_off()
            self.grow_disk()
            self.start()
            m.expect(BOOTCHECK[0], 900)
            self.pull(k, phase, frac, allowed, (slot, version))
            # The boot after the cut grew the partition (the cut came before boot-check
            # wrote it) or its file system (after).
            self.fs_pending = self.seen(GREW_PARTITION) is not None
        elif phase == "grow-fs":
            if not self.fs_pending:
                self.power_off()
                self.grow_disk()
                self.start()
                self.verified_boot({(slot, version)}, f"cut {k}: before the file system growth")
                assert self.seen(GREW_PARTITION), "boot-check did not grow the data partition"
            self.mark(k)
            self.reboot()
            hit = m.expect(GROWFS[0] + rb"|(" + READY + rb")", 900)
            assert not hit.group(1), "the initrd did not grow the data file system"
            self.pull(k, phase, frac, {(slot, version)}, (slot, version))
            self.fs_pending = False


def run(t):
    seed = os.environ.get("ABTEST_SEED") or str(random.SystemRandom().randrange(1 << 32))
    cuts = int(os.environ.get("ABTEST_CUTS") or 20)
    t.step(f"seed {seed}, {cuts} cuts (replay: ABTEST_SEED={seed} ABTEST_CUTS={cuts})")
    c = Cutter(t, seed)
    start = time.monotonic()
    c.calibrate()
    t.time("calibration", time.monotonic() - start)
    size_before = int(c.m.run("cat /sys/class/block/vda4/size")[1].split()[0])
    start = time.monotonic()
    for k in range(cuts):
        c.cut(k)
    t.time(f"{cuts} cuts", time.monotonic() - start)
    t.step(f"cuts per step {c.counts}; booted the old system {c.outcomes['old']} times, "
           f"the new one {c.outcomes['new']} times; seed {seed}")
    if c.counts["grow-partition"]:
        size_after = int(c.m.run("cat /sys/class/block/vda4/size")[1].split()[0])
        assert size_after > size_before, (size_before, size_after)
