#!/usr/bin/env python3
"""Boot time to READY with and without dm-verity, the same disk side by side (docs/benchmarks.md,
"dm-verity at boot"): the fixture's v1 image (its slot a carries abinit.verity= from abbuild)
booted N times each way, alternating, the other way being the same disk with abinit.verity=
taken off slot a's command line. Prints each boot (power-on to the READY line, and the initrd's
whole-slot check from its own uptime stamps) and the medians.

    python3 qemu-tests/bench_verity_boot.py [--artifacts out/qemu] [--boots 3] [--firmware ovmf|seabios]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CHECK = re.compile(rb"verity: slot a matches its root hash \((\d+) blocks read, from ([\d.]+) s to ([\d.]+) s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default="out/qemu")
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--firmware", choices=["ovmf", "seabios"], default="ovmf")
    a = ap.parse_args()
    flavour = "qemu-test" if a.firmware == "ovmf" else "qemu-test-grub"
    firmware = harness.OVMF if a.firmware == "ovmf" else harness.SEABIOS
    work = tempfile.mkdtemp(prefix="bench-verity-")
    src = os.path.join(a.artifacts, f"{flavour}-1.img")
    with_v = os.path.join(work, "with.img")
    without = os.path.join(work, "without.img")
    subprocess.run(["cp", "--sparse=always", src, with_v], check=True)
    harness.add_verity(with_v, "a", work)  # a no-op when abbuild put it there
    subprocess.run(["cp", "--sparse=always", with_v, without], check=True)
    harness.drop_verity(without, "a", work)
    times = {"with": [], "without": []}
    checks = []
    for i in range(a.boots):
        for name, disk in (("with", with_v), ("without", without)):
            # A fresh copy each boot: the first boot's data partition set-up is in every run.
            run_disk = os.path.join(work, f"run-{name}.img")
            subprocess.run(["cp", "--sparse=always", disk, run_disk], check=True)
            m = harness.Machine(work, run_disk, f"{name}-{i}.log", firmware=firmware)
            start = time.monotonic()
            m.start()
            m.wait_ready()
            took = time.monotonic() - start
            m.stop()
            c = CHECK.search(m.output())
            extra = ""
            if name == "with":
                assert c, "no whole-slot check in the boot with verity"
                checks.append(float(c.group(3)) - float(c.group(2)))
                extra = f", check {checks[-1]:.2f} s ({int(c.group(1))} blocks)"
            else:
                assert not c
            times[name].append(took)
            print(f"boot {i + 1} {name} verity: {took:.1f} s to READY{extra}", flush=True)
    for name in ("without", "with"):
        print(f"median {name} verity: {statistics.median(times[name]):.1f} s", flush=True)
    print(f"median whole-slot check: {statistics.median(checks):.2f} s", flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
