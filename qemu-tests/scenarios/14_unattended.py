"""Unattended updates from a channel on a medium (air-gapped): the machine, left alone, checks
every 15 s, installs a newer version, reboots only in its window, refuses a replayed and an
expired channel, and after a broken version falls back and never reinstalls it.

The systems (build-channel-media.sh) have channel = a path on the medium labelled "abupdates",
which their update loop mounts read-only for each check, update-reboot = 03:00-04:00 (UTC),
update-jitter = 3 s. The guest clock starts at 12:00 tomorrow (QEMU -rtc), outside the window;
the scenario moves it into the window with `date -s` where a reboot is wanted. Media are swapped
with the power off, as a person would swap the SSD.
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 266

import datetime
import os
import subprocess
import time

import harness

LOG = "/run/abupdate-update.log"  # the fixture's update loop: one line per check


def checks(m):
    _, out = m.run(f"cat {LOG} 2>/dev/null | wc -l")
    return int(out.split()[-1])


def wait_check(m, after, timeout=600):
    """Waits for the update loop's check number `after + 1`; returns status.update.lastCheck."""
    deadline = time.monotonic() + timeout
    while checks(m) <= after:
        if time.monotonic() > deadline:
            raise harness.GuestError(f"no update check within {timeout} s")
        time.sleep(4)
    return m.status_json()["update"]["lastCheck"]


def slot(st, name):
    return next(s for s in st["slots"] if s["slot"] == name)


def power_off(m):
    m.send("poweroff\n")
    try:
        m.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        m.kill()
    m.stop()


def run(t):
    d = os.path.join(t.artifacts, "channel")
    medium = {n: os.path.join(d, f"medium-{n}.img") for n in ("1", "2", "expired", "4")}
    for path in medium.values():
        assert os.path.exists(path), f"missing {path} (qemu-tests/build-channel-media.sh)"
    disk = os.path.join(t.workdir, "disk-channel.img")
    subprocess.run(["cp", "--sparse=always", os.path.join(d, "qemu-test-1.img"), disk], check=True)
    m = harness.Machine(t.workdir, disk, "serial-0.log")
    t.machines.append(m)
    day = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=1)
    noon = f"{day.isoformat()}T12:00:00"  # after every channel's issue time, outside the window
    in_window = f"date -u -s '{day.isoformat()} 03:30:00' >/dev/null"

    t.step("v1 published (sequence 1): up to date")
    start = time.monotonic()
    m.start(media=[medium["1"]], rtc=noon)
    assert m.wait_ready() == ("a", "1")
    c = wait_check(m, 0)
    if c["code"] == 60:
        raise AssertionError("the media's channels expired (published with --valid-for 14d): "
                             "run qemu-tests/build-fixtures.sh again")
    assert (c["outcome"], c["code"], c["channelVersion"]) == ("up-to-date", 0, "1"), c
    st = m.status_json()
    assert st["update"]["channel"].endswith("/qemu-test/stable.json"), st
    t.time("boot and first check", time.monotonic() - start)
    power_off(m)

    t.step("v2 published (sequence 2): installed outside the window, no reboot")
    start = time.monotonic()
    m.start(media=[medium["2"]], rtc=noon)
    assert m.wait_ready() == ("a", "1")
    c = wait_check(m, 0)
    assert (c["outcome"], c["code"], c["channelVersion"]) == ("installed", 50, "2"), c
    t.time("boot, check and install of v2", time.monotonic() - start)
    c = wait_check(m, 1)
    assert (c["outcome"], c["code"]) == ("reboot-pending", 50), c
    st = m.status_json()
    assert st["runningSlot"] == "a" and st["nextBootSlot"] == "b", st
    assert slot(st, "b")["state"] == "trying" and slot(st, "b")["version"] == "2", st

    t.step("the clock enters the window: the next check reboots into v2")
    start = time.monotonic()
    m.run(in_window)
    assert m.wait_ready(timeout=600) == ("b", "2")
    t.time("into the window to v2 marked good", time.monotonic() - start)
    c = wait_check(m, 0)
    assert (c["outcome"], c["code"]) == ("up-to-date", 0), c
    st = m.status_json()
    assert slot(st, "b")["state"] == "good", st
    power_off(m)

    t.step("the v1 medium again (sequence 1 < 2): a replay, refused")
    m.start(media=[medium["1"]], rtc=noon)
    assert m.wait_ready() == ("b", "2")
    c = wait_check(m, 0)
    assert (c["outcome"], c["code"]) == ("refused", 59), c
    assert "sequence" in c["message"], c
    _, log = m.run(f"tail -n 1 {LOG}")
    assert "exit 59" in log, log
    power_off(m)

    t.step("an expired channel (sequence 3, valid for 1 s): refused")
    m.start(media=[medium["expired"]], rtc=noon)
    assert m.wait_ready() == ("b", "2")
    c = wait_check(m, 0)
    assert (c["outcome"], c["code"]) == ("refused", 60), c
    assert "expired" in c["message"], c
    st = m.status_json()
    assert st["runningSlot"] == "b" and st["nextBootSlot"] == "b", st
    power_off(m)

    t.step("broken v4 (sequence 4): installed, rebooted in the window, falls back")
    start = time.monotonic()
    m.start(media=[medium["4"]], rtc=noon)
    assert m.wait_ready() == ("b", "2")
    c = wait_check(m, 0)
    assert (c["outcome"], c["code"], c["channelVersion"]) == ("installed", 50, "4"), c
    m.run(in_window)
    for attempt in range(3):
        m.expect(rb"ABTEST BROKEN", 600)
        t.step(f"broken v4 failed on try {attempt + 1}")
    assert m.wait_ready(timeout=600) == ("b", "2")
    t.time("install of v4 to the fallback on v2", time.monotonic() - start)

    t.step("later checks skip v4: failed here before")
    # The clock is back at noon (the RTC): put it in the window, where a reinstall would reboot.
    m.run(in_window)
    for n in range(2):
        c = wait_check(m, n)
        assert (c["outcome"], c["code"], c["channelVersion"]) == ("failed-before", 52, "4"), c
    st = m.status_json()
    assert st["lastBootWasFallback"] is True, st
    assert st["update"]["failedVersions"] == ["4"], st
    assert st["runningSlot"] == "b" and st["nextBootSlot"] == "b", st
    assert slot(st, "a")["state"] == "bad" and slot(st, "a")["version"] == "4", st
    _, text = m.run("abupdate status")
    assert "versions that failed here: 4" in text, text
