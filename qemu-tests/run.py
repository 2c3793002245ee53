#!/usr/bin/env python3
"""Runs the QEMU scenarios (qemu-tests/scenarios/NN_name.py, one scenario per file), each on
fresh copies of the fixture images that build-fixtures.sh made. Prints each scenario's wall
time and timings, keeps every serial log, prints the log tail of a failed scenario, and ends
with 'N passed, M failed'.

    python3 qemu-tests/run.py [--artifacts DIR] [--jobs N] [--cuts N] [--seed S] [SCENARIO ...]

Scenarios run two at a time by default (--jobs, or QEMU_JOBS), each in its own process.

--cuts and --seed are for 08_random_cuts (the same as ABTEST_CUTS and ABTEST_SEED).
"""

import argparse
import importlib.util
import json
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


def run_one(here, artifacts, f):
    """Runs scenario file `f` here, in this process; prints its progress; returns (ok, wall,
    timings)."""
    name = f[:-3]
    logs = os.path.join(artifacts, "logs")
    workdir = os.path.join(artifacts, "run", name)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    mod = load(os.path.join(here, "scenarios", f))
    print(f"== {name}: {(mod.__doc__ or '').strip().splitlines()[0]}", flush=True)
    t = Test(name, artifacts, workdir)
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
        print(f"ok {name} ({wall:.0f} s)", flush=True)
        for m in t.machines:
            os.remove(m.disk)
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"FAILED {name} ({wall:.0f} s); serial logs kept in {logs}", flush=True)
        for m in t.machines:
            with open(m.log_path, "rb") as fh:
                tail = fh.read().decode(errors="replace").splitlines()[-120:]
            print(f"--- last lines of {os.path.basename(m.log_path)}:")
            print("\n".join(tail))
    return ok, wall, t.timings


def run_parallel(here, args, files, jobs):
    """Runs each scenario in a child process of this script, `jobs` at a time, longest
    expected first (a scenario's EXPECTED_SECONDS), so the suite ends about when its longest
    scenario does. Each child's output is printed whole when it ends, never interleaved."""
    def expected(f):
        return getattr(load(os.path.join(here, "scenarios", f)), "EXPECTED_SECONDS", 60)

    pending = sorted(files, key=expected, reverse=True)
    running, results = [], {}
    tmp = os.path.join(args.artifacts, "run")
    os.makedirs(tmp, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            f = pending.pop(0)
            out = open(os.path.join(tmp, f"{f[:-3]}.out"), "w+")
            result = os.path.join(tmp, f"{f[:-3]}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--jobs", "1",
                   "--artifacts", args.artifacts, "--result", result, f[:-3]]
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            running.append((f, proc, out, result))
        time.sleep(0.5)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            f, proc, out, result = item
            out.seek(0)
            sys.stdout.write(out.read())
            sys.stdout.flush()
            out.close()
            try:
                with open(result) as fh:
                    ok, wall, timings = json.load(fh)
            except (OSError, ValueError):
                ok, wall, timings = False, 0.0, []
                print(f"FAILED {f[:-3]}: its runner exited {proc.returncode} without a result")
            results[f] = (ok, wall, [tuple(x) for x in timings])
    return [(f[:-3], *results[f]) for f in files]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default=os.path.join(here, "..", "out", "qemu"))
    ap.add_argument("--timings", help="append a markdown table of timings to this file")
    ap.add_argument("--cuts", type=int, help="power cuts of 08_random_cuts (default 20)")
    ap.add_argument("--seed", type=int, help="replay 08_random_cuts with this seed")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("QEMU_JOBS", "2")),
                    help="scenarios run side by side, each in its own process (default "
                         "QEMU_JOBS or 2; one virtual CPU each)")
    ap.add_argument("--result", help=argparse.SUPPRESS)  # a child's JSON result (--jobs > 1)
    ap.add_argument("scenarios", nargs="*", help="names like 01_happy_path (default: all)")
    args = ap.parse_args()
    args.artifacts = os.path.abspath(args.artifacts)
    if args.cuts is not None:
        os.environ["ABTEST_CUTS"] = str(args.cuts)
    if args.seed is not None:
        os.environ["ABTEST_SEED"] = str(args.seed)
    files = sorted(f for f in os.listdir(os.path.join(here, "scenarios")) if f.endswith(".py"))
    if args.scenarios:
        files = [f for f in files if f[:-3] in args.scenarios or f[:2] in args.scenarios]
    # Probe once, before any timing starts; children inherit the answer.
    os.environ.setdefault("ABTEST_ACCEL", "kvm" if harness.kvm_works() else "tcg")
    start = time.monotonic()
    if args.jobs > 1 and len(files) > 1:
        rows = run_parallel(here, args, files, args.jobs)
    else:
        rows = [(f[:-3], *run_one(here, args.artifacts, f)) for f in files]
    if args.result:
        _, ok, wall, timings = rows[0]
        with open(args.result, "w") as fh:
            json.dump([ok, wall, timings], fh)
    passed = sum(1 for row in rows if row[1])
    failed = len(rows) - passed
    if args.timings:
        with open(args.timings, "a") as fh:
            fh.write("| scenario | result | wall time (s) | timings |\n|---|---|---:|---|\n")
            for name, ok, wall, timings in rows:
                tt = ", ".join(f"{label} {s:.0f} s" for label, s in timings)
                fh.write(f"| {name} | {'ok' if ok else 'FAILED'} | {wall:.0f} | {tt} |\n")
    if not args.result:
        print(f"qemu: suite wall time {time.monotonic() - start:.0f} s, {args.jobs} at a time")
        print(f"qemu: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
