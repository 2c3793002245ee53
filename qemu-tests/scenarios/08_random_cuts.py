"""Random power cuts: 20 cuts at random points of apply, first boot, mark-good, rollback, growth.

The plug is pulled (SIGKILL of QEMU) at N random points, 20 unless ABTEST_CUTS or
`run.py --cuts N` says otherwise, in these steps:

- apply: `abupdate apply` of the next version (1 -> 2 -> 3 -> 2 ...): slot write, read-back,
  ESP write, boot entry; cut within the command's duration;
- first-boot: a reboot after a completed apply; cut anywhere until READY (firmware,
  systemd-boot's try counter, initrd, boot-check);
- mark-good: the new slot's first boot, from the line `health check passed` until `mark-good
  exited`;
- rollback: `abupdate rollback`; cut within its duration;
- grow-partition: the disk grows by 32 MiB under the running system (QMP block_resize) and
  `abupdate boot-check`, what every boot runs, moves the backup GPT and grows the data
  partition; cut within its duration;
- grow-fs: the next boot, from the initrd's `growing the data filesystem` until the system's
  init starts (e2fsck -f, resize2fs).

After every cut the machine must boot to READY on a system that could be running (the old one,
or the new one if the step could have finished), `status` must agree and call it good, and
every marker file written to /data/cuts before a cut must be there.

Each step first runs once uncut to measure its window (the first boot gives the boot windows);
cut k then comes at a fraction of the window, times 1.1, drawn from the seed and k. The seed is
printed; ABTEST_SEED=S (or --seed S) replays it. Each cut goes to the step with the fewest cuts
among those possible without an extra boot (rollback needs a good other slot, grow-fs a grown
partition); a step two cuts behind gets the boot it needs. One machine for the whole run.
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 369

import json
import os
import random
import re
import time

GROW_MIB = 32  # the initrd grows the file system when its partition is >= 8 MiB larger
PHASES = ["apply", "first-boot", "mark-good", "rollback", "grow-partition", "grow-fs"]
MEDIA = {"2": "/dev/vdb", "3": "/dev/vdc"}  # which medium holds which version's bundle
# Serial lines that start and end the steps timed inside a boot (nix/fixture, nix/initrd).
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
        self.windows = {}  # step -> seconds, measured uncut
        self.state = None  # (slot, version) running
        self.status = None
        self.fs_pending = False  # the data partition is larger than its file system
        self.since = 0  # output offset where the current boot starts
        self.tracked = 0  # output offset up to which track_growth has looked
        self.counts = {p: 0 for p in PHASES}
        self.outcomes = {"old": 0, "new": 0}
        self.boots = 0

    # --- booting and checking ----------------------------------------------------------

    def start(self):
        self.m.start(media=self.media)
        self.since = self.tracked = 0

    def track_growth(self):
        """Follows what the output shows about a bigger disk: the initrd growing the file
        system to its partition, boot-check (at boot or run by hand) growing the partition to
        the disk. The last of them tells whether the file system has a growth pending. Run
        before every cut too: a cut boot may have done either."""
        out = self.m.output(self.tracked)
        self.tracked += len(out)
        events = re.findall(GROWFS[0] + rb"|" + GREW_PARTITION, out)
        if events:
            self.fs_pending = events[-1].startswith(b"grew")

    def reboot(self):
        self.since = self.m.offset()
        self.m.reboot()

    def seen(self, pattern):
        return self.m.seen(pattern, self.since)

    def span(self, marks):
        start, end = self.seen(marks[0]), self.seen(marks[1])
        assert start is not None and end is not None, f"serial lines {marks} not seen"
        return end - start

    def measured(self, step, seconds):
        self.windows[step] = seconds
        self.t.time(f"window {step} (uncut)", seconds)

    def verified_boot(self, allowed, label):
        """Waits for READY and checks slot, version, status and the markers."""
        slot, version = self.m.wait_ready(timeout=900)
        self.boots += 1
        assert (slot, version) in allowed, \
            f"{label}: booted slot {slot} version {version}, expected one of {sorted(allowed)}"
        # One round trip for the status and the markers.
        # (The marker is split in the command so that its echo does not match.)
        out = self.m.run("abupdate status --json 2>/dev/null; echo '<mark''ers>'; "
                         "cat /data/cuts/* 2>/dev/null; true")[1]
        status, _, markers = out.rpartition("<markers>")
        st = json.loads(status[status.find("{"): status.rfind("}") + 1])
        assert st["runningSlot"] == slot, (label, st)
        mine = slot_info(st, slot)
        assert mine["version"] == version and mine["state"] == "good", (label, st)
        found = markers.split()
        assert found == self.markers, f"{label}: /data/cuts holds {found}, wrote {self.markers}"
        self.state, self.status = (slot, version), st
        if "grow-fs" not in self.windows and self.seen(GROWFS[0]):
            self.measured("grow-fs", self.span(GROWFS))
        self.track_growth()
        return slot, version

    def apply_command(self):
        """The next update for the running version: 1 -> 2, 2 -> 3, 3 -> 2 (a downgrade)."""
        running = self.state[1]
        new = {"1": "2", "2": "3", "3": "2"}[running]
        flag = " --allow-downgrade" if new < running else ""
        return new, f"abupdate apply{flag} {MEDIA[new]}"

    def timed(self, command):
        start = time.monotonic()
        self.m.run(command, timeout=900)
        return time.monotonic() - start

    def apply_uncut(self):
        new, cmd = self.apply_command()
        seconds = self.timed(cmd)
        return new, seconds

    def grow_uncut(self):
        self.m.grow_disk(GROW_MIB << 20)
        start = time.monotonic()
        out = self.m.run("abupdate boot-check 2>&1", timeout=300)[1]
        seconds = time.monotonic() - start
        assert "grew the data partition" in out, out
        self.fs_pending = True
        return seconds

    def first_boot(self):
        start = time.monotonic()
        self.start()
        self.verified_boot({("a", "1")}, "first boot")
        self.measured("first-boot", self.seen(READY) - start)
        self.measured("mark-good", self.span(MARKGOOD))

    # --- choosing a step ----------------------------------------------------------------

    def possible(self, step):
        """Whether `step` can be cut now without an extra boot."""
        if step == "rollback":
            nxt = self.status["nextBootSlot"]
            if "rollback" not in self.windows and (nxt != self.state[0] or self.downgraded()):
                # The measuring run is undone by mark-good of the running slot. That puts
                # the running slot first again only if it is not older than the other one:
                # mark-good drops a boot counter and reorders nothing (systemd-boot then
                # prefers the newer good entry, GRUB keeps the order rollback set).
                return False
            return slot_info(self.status, other(nxt))["state"] == "good"
        if step == "grow-fs":
            return self.fs_pending and "grow-fs" in self.windows
        return True

    def downgraded(self):
        """The running slot holds an older version than the other slot (after 3 -> 2)."""
        running = slot_info(self.status, self.state[0])["version"]
        other_version = slot_info(self.status, other(self.state[0]))["version"]
        return other_version is not None and int(other_version) > int(running)

    def prepare(self, step):
        """Makes a step possible that has fallen behind (an update booted, a grown partition)."""
        if step == "rollback":
            # An update booted: the old slot stays good. After a downgrade (3 -> 2) the
            # measuring run could not be undone (see possible): one more update (2 -> 3).
            for _ in range(2):
                if self.possible(step):
                    break
                slot = self.state[0]
                new, _ = self.apply_uncut()
                self.reboot()
                self.verified_boot({(other(slot), new)}, f"{step}: an update to roll back")
            assert self.possible(step), self.status
        elif step == "grow-fs":
            if not self.fs_pending or "grow-fs" not in self.windows:
                self.grow_uncut()
            if "grow-fs" not in self.windows:
                self.reboot()
                self.verified_boot({self.state}, "grow-fs: measuring the growth")
                self.grow_uncut()

    def choose(self, k):
        rng = random.Random(f"{self.seed}/{k}/step")
        top = max(self.counts.values())
        behind = [p for p in PHASES if self.counts[p] < top - 1]
        if behind:
            step = behind[0]
            if not self.possible(step):
                self.prepare(step)
            return step
        ready = [p for p in PHASES if self.possible(p)]
        fewest = min(self.counts[p] for p in ready)
        return rng.choice([p for p in ready if self.counts[p] == fewest])

    # --- one cut ------------------------------------------------------------------------

    def mark(self, k):
        token = f"cut{k:04d}-seed{self.seed}"
        self.m.run(f"mkdir -p /data/cuts && echo {token} > /data/cuts/{k:04d} && sync")
        self.markers.append(token)

    def pull(self, k, step, frac, allowed):
        """Sleeps frac of the step's window (plus 10% so its end is covered), cuts, boots."""
        old = self.state
        delay = frac * self.windows[step] * 1.1
        time.sleep(delay)
        self.m.kill()
        self.track_growth()
        start = time.monotonic()
        self.start()
        got = self.verified_boot(allowed, f"cut {k} ({step} at +{delay:.2f} s)")
        self.t.step(f"cut {k}: {step} at +{delay:.2f} s -> slot {got[0]} version {got[1]} "
                    f"({time.monotonic() - start:.0f} s to READY)")
        self.counts[step] += 1
        self.outcomes["old" if got == old else "new"] += 1

    def cut(self, k):
        step = self.choose(k)
        frac = random.Random(f"{self.seed}/{k}").random()
        m = self.m
        running = self.state
        nxt = self.status["nextBootSlot"]
        allowed = {running, (nxt, slot_info(self.status, nxt)["version"])}
        if step in ("apply", "first-boot", "mark-good") and "apply" not in self.windows:
            _, seconds = self.apply_uncut()
            self.measured("apply", seconds)
        if step == "apply":
            new, cmd = self.apply_command()
            self.mark(k)
            # Piped through cat: progress lines, no redrawn bar.
            m.send(f"{cmd} 2>&1 | cat\n")
            self.pull(k, step, frac, allowed | {(other(running[0]), new)})
        elif step in ("first-boot", "mark-good"):
            new, _ = self.apply_uncut()
            self.mark(k)
            self.reboot()
            if step == "mark-good":
                m.expect(MARKGOOD[0], 900)
            self.pull(k, step, frac, {running, (other(running[0]), new)})
        elif step == "rollback":
            if "rollback" not in self.windows:
                self.measured("rollback", self.timed("abupdate rollback"))
                self.timed("abupdate mark-good")  # undoes it: the running slot is good again
                st = m.status_json()
                assert st["nextBootSlot"] == nxt, st
            back = other(nxt)
            self.mark(k)
            m.send("abupdate rollback\n")
            self.pull(k, step, frac, allowed | {(back, slot_info(self.status, back)["version"])})
        elif step == "grow-partition":
            if "grow-partition" not in self.windows:
                self.measured("grow-partition", self.grow_uncut())
            self.mark(k)
            m.grow_disk(GROW_MIB << 20)
            m.send("abupdate boot-check\n")
            self.pull(k, step, frac, allowed)
        elif step == "grow-fs":
            self.mark(k)
            self.reboot()
            hit = m.expect(GROWFS[0] + rb"|(" + READY + rb")", 900)
            assert not hit.group(1), "the initrd did not grow the data file system"
            self.pull(k, step, frac, allowed)


def run(t):
    seed = os.environ.get("ABTEST_SEED") or str(random.SystemRandom().randrange(1 << 32))
    cuts = int(os.environ.get("ABTEST_CUTS") or 20)
    t.step(f"seed {seed}, {cuts} cuts (replay: ABTEST_SEED={seed} ABTEST_CUTS={cuts})")
    c = Cutter(t, seed)
    c.first_boot()
    size_before = int(c.m.run("cat /sys/class/block/vda4/size")[1].split()[0])
    start = time.monotonic()
    for k in range(cuts):
        c.cut(k)
    t.time(f"{cuts} cuts", time.monotonic() - start)
    t.step(f"cuts per step {c.counts}; booted the old system {c.outcomes['old']} times, "
           f"the new one {c.outcomes['new']} times; {c.boots} boots to READY; seed {seed}")
    if cuts >= 2 * len(PHASES):
        assert min(c.counts.values()) >= 1, c.counts
    if c.counts["grow-partition"]:
        size_after = int(c.m.run("cat /sys/class/block/vda4/size")[1].split()[0])
        assert size_after > size_before, (size_before, size_after)
