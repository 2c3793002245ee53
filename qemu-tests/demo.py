#!/usr/bin/env python3
"""The demo (README's main job): boot the v1 disk image under QEMU, show `abupdate status`,
apply the v2 bundle from a second disk, reboot, and show the status again."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def show(title, text):
    print(f"\n--- {title}")
    print(text.strip())


def main():
    artifacts = sys.argv[1]
    workdir = os.path.join(artifacts, "demo")
    os.makedirs(workdir, exist_ok=True)
    disk = os.path.join(workdir, "disk.img")
    os.system(f"cp --sparse=always {artifacts}/qemu-test-1.img {disk}")
    m = harness.Machine(workdir, disk, "serial.log")
    start = time.monotonic()
    print(f"booting v1 under QEMU (serial log: {m.log_path}) ...", flush=True)
    m.start(media=[os.path.join(artifacts, "qemu-test-2.abu")])
    try:
        slot, version = m.wait_ready()
        print(f"up after {time.monotonic() - start:.0f} s: slot {slot}, version {version}")
        show("abupdate status (before)", m.run("abupdate status")[1])
        t = time.monotonic()
        show("abupdate apply /dev/vdb", m.run("abupdate apply /dev/vdb 2>&1 | cat", timeout=900)[1])
        print(f"(apply took {time.monotonic() - t:.0f} s)")
        show("abupdate status (after apply, before reboot)", m.run("abupdate status")[1])
        print("\nrebooting ...", flush=True)
        t = time.monotonic()
        m.reboot()
        slot, version = m.wait_ready()
        print(f"up after {time.monotonic() - t:.0f} s: slot {slot}, version {version}")
        show("abupdate status (after reboot; the system marked itself good)", m.run("abupdate status")[1])
        if (slot, version) != ("b", "2"):
            print("demo FAILED: expected v2 from slot b")
            return 1
        print("\ndemo: v1 (slot a) -> v2 (slot b) done")
        return 0
    finally:
        m.stop()


if __name__ == "__main__":
    sys.exit(main())
