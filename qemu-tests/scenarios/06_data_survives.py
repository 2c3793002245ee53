"""Data survives: a file written to the data partition before an update is still there after
an HTTP delta apply cut by a power loss, the re-run that resumes it, and a fallback from a
broken update.

v2 comes over HTTP (a loopback server reached only through QEMU's restricted user network,
qemu-tests/httpd.py) as a delta: the guest fetches only the ranges of the bundle its slots do
not hold. The first apply loses power before its range downloads end; the re-run fetches less
than the first plan, because what the cut apply wrote to the target slot is a seed too.
"""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 104

import json
import os
import re
import time

import httpd


def plan(m, url):
    """`abupdate apply --dry-run --json` in the guest."""
    _, out = m.run(f"abupdate apply --dry-run --json {url} 2>/dev/null", timeout=600)
    return json.loads(out[out.find("{"): out.rfind("}") + 1])


def settled(m, quiet=3, timeout=120):
    """Waits until nothing more is written to the guest's disk for `quiet` samples a second
    apart (sectors written, /sys/block/vda/stat: abupdate syncs each batch it writes)."""
    last, same = None, 0
    deadline = time.monotonic() + timeout
    while same < quiet:
        assert time.monotonic() < deadline, "the cut apply never stopped writing"
        _, out = m.run("echo W=$(awk '{print $7}' /sys/block/vda/stat)X; sleep 1")
        now = re.search(r"W=(\d+)X", out).group(1)
        same = same + 1 if now == last else 0
        last = now


def fetch_bytes(p):
    return sum(pp["fetchBytes"] for pp in p["payloads"])


def run(t):
    bundle = t.bundle("qemu-test-2")
    size = os.path.getsize(bundle)
    srv = httpd.Server(os.path.dirname(bundle))
    try:
        scenario(t, srv, srv.url("qemu-test-2.abu"), size)
    finally:
        srv.stop()


def scenario(t, srv, url, size):
    m = t.machine("1")
    m.start(media=[t.bundle("broken")], http=srv)
    assert m.wait_ready() == ("a", "1")
    m.run("echo precious > /data/keep-me && sync")
    m.network_up()
    # restrict=on: not even the host's loopback server is reachable other than through the
    # guestfwd (unrestricted user networking would take 10.0.2.2 to the host's 127.0.0.1).
    # (busybox nc: its wget crashes with -T, and without it waits minutes for the connect.)
    status, _ = m.run(f"printf 'HEAD /qemu-test-2.abu HTTP/1.0\\r\\n\\r\\n' | "
                      f"nc -w 3 10.0.2.2 {srv.port}", check=False, timeout=60)
    assert status != 0 and srv.count() == 0, srv.log()

    t.step("plan v2 over HTTP")
    start = time.monotonic()
    first = plan(m, url)
    t.time("plan v2 over HTTP", time.monotonic() - start)
    assert first["mode"] == "delta", first
    want = fetch_bytes(first)
    assert 0 < want and first["readBytes"] < size // 2, first
    print(f"    plan: fetch {want} of {size} bytes in {first['requests']} requests", flush=True)

    # The cut comes with the bundle's last fetched byte still to come: ranges go out side by
    # side, so the stall is by offset (every other range arrives whole). The slot writes
    # before the one (a batch of up to 512 KiB) that holds the last fetched chunk are made then.
    t.step("apply v2 over HTTP, power cut before the last byte of the range downloads")
    last = max(r["end"] for pp in first["payloads"] for r in pp["ranges"])
    srv.stall(last - 1)
    start = time.monotonic()
    m.run(f"(abupdate apply {url} >/tmp/apply.log 2>&1 &)")
    assert srv.stalled.wait(600), "the apply never got to its last range byte"
    # The other ranges may still be on their way to the writer: wait until the apply writes
    # nothing more, then what it wrote reaches the disk (as the kernel's writeback would within
    # 30 s on a download that takes longer than this one), then the plug is pulled.
    settled(m)
    m.run("sync")
    m.kill()
    srv.release()
    t.time("apply until the cut", time.monotonic() - start)

    start = time.monotonic()
    m.start(media=[t.bundle("broken")], http=srv)
    assert m.wait_ready() == ("a", "1")
    t.time("boot after the cut (v1)", time.monotonic() - start)
    assert m.run("cat /data/keep-me")[1].strip() == "precious"
    m.network_up()

    t.step("re-run the apply: fetches only what is still missing")
    since = srv.count()
    start = time.monotonic()
    _, out = m.run(f"abupdate apply {url}", timeout=900)
    t.time("resumed apply v2 over HTTP", time.monotonic() - start)
    assert re.search(r"slot b: \d+ bytes written and read back", out), out
    done = re.search(r"delta: (\d+) bytes read from the bundle, (\d+) copied from seeds, "
                     r"(\d+) already in place", out)
    assert done, out
    fetched, in_place = int(done.group(1)), int(done.group(3))
    log = srv.log(since)
    ranges = [r for r in log if r["range"]]
    sent, range_sent = srv.sent(since), sum(r["sent"] for r in ranges)
    print(f"    re-run: {fetched} bytes read from the bundle, {in_place} already in place; "
          f"the server sent {sent} bytes: {range_sent} in {len(ranges)} ranges, "
          f"{sent - range_sent} for {len(log) - len(ranges)} other requests "
          f"(the bundle: {size} bytes)", flush=True)
    assert ranges and all(r["status"] == 206 for r in ranges), log
    # Resumed: chunks only the bundle had before the cut are in slot b now (the cut apply
    # wrote them), so less comes from the bundle and over the wire than the first plan's.
    assert in_place > 0 and fetched < want, out
    front = min(65536, size)
    assert range_sent - front < sum(pp["readBytes"] for pp in first["payloads"]), (log, first)
    # Every request is a range, the front's included (the bundle's first 64 KiB): no GET of
    # the whole bundle, so the server sent the front and the missing chunks' ranges only.
    assert len(ranges) == len(log), log
    assert sent < front + want, log

    m.reboot()
    assert m.wait_ready() == ("b", "2")
    assert m.run("cat /data/keep-me")[1].strip() == "precious"

    t.step("broken v4 from /dev/vdb: falls back")
    m.run("abupdate apply /dev/vdb", timeout=900)
    m.reboot()
    # Broken system in slot a: three failed tries, then back to v2 in slot b.
    assert m.wait_ready(timeout=900) == ("b", "2")
    assert m.run("cat /data/keep-me")[1].strip() == "precious"
