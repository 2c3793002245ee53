#!/usr/bin/env python3
"""Runs the QEMU scenarios (qemu-tests/scenarios/NN_name.py, one scenario per file), each on
fresh copies of the fixture images that build-fixtures.sh made. Prints each scenario's wall
time and timings, keeps every serial log, prints the log tail of a failed scenario, and ends
with 'N passed, M failed'.

    python3 qemu-tests/run.py [--artifacts DIR] [--cuts N] [--seed S] [SCENARIO ...]

--cuts and --seed are for 08_random_cuts (the same as ABTEST_CUTS and ABTEST_SEED).
"""

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class Test:
    """What a scenario gets: its work directory, the fixture artifacts, machines, timings."""

    def __init__(self, name, artifacts, workdir):
        self.name = name
        self.artifacts = artifacts
        self.workdir = workdir
        self.machines = []
        self.timings = []

    # Disk flavours: the image definition each fixture disk was built from.
    FLAVOURS = {"systemd-boot": "qemu-test", "grub": "qemu-test-grub"}

    def image(self, version, flavour="systemd-boot"):
        """A fresh, private copy of the disk image of `version` (systemd-boot: v1-v3; grub: v1,
        the same system on the GRUB disk of images/qemu-test-grub.toml)."""
        src = os.path.join(self.artifacts, f"{self.FLAVOURS[flavour]}-{version}.img")
        assert os.path.exists(src), f"missing fixture image {src}"
        dst = os.path.join(self.workdir, f"disk-{len(self.machines)}.img")
        subprocess.run(["cp", "--sparse=always", src, dst], check=True)
        return dst

    def bundle(self, name):
        path = os.path.join(self.artifacts, f"{name}.abu")
        if not os.path.exists(path):
            path = os.path.join(self.artifacts, f"qemu-test-{name}.abu")
        assert os.path.exists(path), f"missing fixture bundle {name}"
        return path

    def machine(self, version="1", flavour="systemd-boot", **options):
        """A machine booting a fresh copy of `version`'s image of `flavour` ("systemd-boot" or
        "grub"); `options` go to harness.Machine (memory, firmware: harness.OVMF, the default,
        or harness.SEABIOS; machine)."""
        m = harness.Machine(self.workdir, self.image(version, flavour),
                            f"serial-{len(self.machines)}.log", **options)
        self.machines.append(m)
        return m

    def time(self, label, seconds):
        self.timings.append((label, seconds))
        print(f"    {label}: {seconds:.1f} s", flush=True)

    def step(self, text):
        print(f"  - {text}", flush=True)


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default=os.path.join(here, "..", "out", "qemu"))
    ap.add_argument("--timings", help="append a markdown table of timings to this file")
    ap.add_argument("--cuts", type=int, help="power cuts of 08_random_cuts (default 20)")
    ap.add_argument("--seed", type=int, help="replay 08_random_cuts with this seed")
    ap.add_argument("scenarios", nargs="*", help="names like 01_happy_path (default: all)")
    args = ap.parse_args()
    if args.cuts is not None:
        os.environ["ABTEST_CUTS"] = str(args.cuts)
    if args.seed is not None:
        os.environ["ABTEST_SEED"] = str(args.seed)
    files = sorted(f for f in os.listdir(os.path.join(here, "scenarios")) if f.endswith(".py"))
    if args.scenarios:
        files = [f for f in files if f[:-3] in args.scenarios or f[:2] in args.scenarios]
    harness.kvm_works()  # probe once, before any timing starts
    passed, failed, rows = 0, 0, []
    logs = os.path.join(args.artifacts, "logs")
    for f in files:
        name = f[:-3]
        workdir = os.path.join(args.artifacts, "run", name)
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        mod = load(os.path.join(here, "scenarios", f))
        print(f"== {name}: {(mod.__doc__ or '').strip().splitlines()[0]}", flush=True)
        t = Test(name, args.artifacts, workdir)
        start = time.monotonic()
        ok = True
        try:
            mod.run(t)
        except Exception:
            ok = False
            traceback.print_exc()
        finally:
            for m in t.machines:
                m.stop()
        wall = time.monotonic() - start
        os.makedirs(logs, exist_ok=True)
        for m in t.machines:
            shutil.copy(m.log_path, os.path.join(logs, f"{name}-{os.path.basename(m.log_path)}"))
        if ok:
            passed += 1
            print(f"ok {name} ({wall:.0f} s)", flush=True)
            for m in t.machines:
                os.remove(m.disk)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            failed += 1
            print(f"FAILED {name} ({wall:.0f} s); serial logs kept in {logs}", flush=True)
            for m in t.machines:
                with open(m.log_path, "rb") as fh:
                    tail = fh.read().decode(errors="replace").splitlines()[-120:]
                print(f"--- last lines of {os.path.basename(m.log_path)}:")
                print("\n".join(tail))
        rows.append((name, wall, t.timings, ok))
    if args.timings:
        with open(args.timings, "a") as fh:
            fh.write("| scenario | result | wall time (s) | timings |\n|---|---|---:|---|\n")
            for name, wall, timings, ok in rows:
                tt = ", ".join(f"{label} {s:.0f} s" for label, s in timings)
                fh.write(f"| {name} | {'ok' if ok else 'FAILED'} | {wall:.0f} | {tt} |\n")
    print(f"qemu: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
