"""IPv6 and the clock: a static IPv6 address with a link-local gateway and router advertisements
off (as mkSystem's `slaac = false`, the Hetzner set-up), then SLAAC next to it; both reach an
HTTP server on the host's ::1. The guest clock starts years wrong and is set from the host.

The network is QEMU's user network with IPv6 (harness `ipv6=`): its router advertises
2001:db8:ab::/64 from fe80::2; 2001:db8:ab::2 and 10.0.2.2 are the host's loopback. The guest is
given no other address and asks no DNS, so nothing leaves the host. The commands are the ones
mkSystem's boot script runs for `networking.interfaces` (nix/system/build.nix). The static
address is a /128, so that even the host's address in the same /64 is reached through the
link-local gateway rather than on-link.

The clock: Debian's busybox (the fixture's) has neither ntpd nor udhcpc6, so the fixture cannot
run mkSystem's ntpd; the clock is set with busybox `rdate` (RFC 868, over TCP) from a server on
the host's 127.0.0.1 instead. What this shows is the path (a wrong RTC, a time server the site
names, reached from the guest); busybox ntpd itself is covered by the Nix test
`mksystem_ipv6_and_time` only (docs/nix.md).
"""

# Wall time of the runs of 2026-12-07 (33 and 39 s; SeaBIOS, TCG, alone; 25-30 s is the boot).
EXPECTED_SECONDS = 36

import os
import socket
import struct
import threading
import time

import harness
import httpd

PREFIX = "2001:db8:ab::"
STATIC = "2001:db8:ab::10"
HOST6 = "2001:db8:ab::2"  # QEMU's host address in the prefix: the host's ::1
GATEWAY = "fe80::2"  # QEMU's router (its link-local address)
WRONG_RTC = "2020-01-01T00:00:00"


class TimeServer:
    """RFC 868 on 127.0.0.1: each connection gets the host's time as 32-bit seconds since 1900."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.served = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(struct.pack(">I", int(time.time()) + 2208988800))
            self.served += 1

    def stop(self):
        self.sock.close()


def wait_for(m, command, pattern, timeout=30):
    """Runs `command` in the guest until its output contains `pattern`; returns the output."""
    deadline = time.monotonic() + timeout
    while True:
        _, out = m.run(command)
        if pattern in out:
            return out
        if time.monotonic() > deadline:
            raise harness.GuestError(f"no {pattern!r} after {timeout} s in:\n{out}")
        time.sleep(1)


def fetch6(m, srv, want):
    count = srv.count()
    _, out = m.run(f"wget -q -O - 'http://[{HOST6}]:{srv.port}/hello.txt'", timeout=60)
    assert want in out, out
    assert srv.count() == count + 1, srv.log()


def run(t):
    want = f"hello over IPv6 {os.getpid()}"
    with open(os.path.join(t.workdir, "hello.txt"), "w") as f:
        f.write(want + "\n")
    srv = httpd.Server(t.workdir, host="::1")
    clock = TimeServer()
    try:
        scenario(t, srv, clock, want)
    finally:
        srv.stop()
        clock.stop()


def scenario(t, srv, clock, want):
    m = t.machine("1", flavour="grub", firmware=harness.SEABIOS)
    start = time.monotonic()
    m.start(rtc=WRONG_RTC, ipv6=PREFIX)
    assert m.wait_ready() == ("a", "1")
    t.time("boot", time.monotonic() - start)
    _, year = m.run("date -u +%Y")
    assert year.strip() == "2020", year

    t.step("static IPv6 address, link-local gateway, router advertisements off (slaac = false)")
    m.run("echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra && "
          "echo 0 > /proc/sys/net/ipv6/conf/eth0/autoconf && ip link set eth0 up && "
          f"ip addr add {STATIC}/128 dev eth0 && "
          f"ip -6 route replace default via {GATEWAY} dev eth0")
    addrs = wait_for(m, "ip -6 addr show dev eth0 | grep -v tentative", f"inet6 {STATIC}/128")
    _, route = m.run(f"ip -6 route get {HOST6}")
    assert f"via {GATEWAY} dev eth0" in route, route
    fetch6(m, srv, want)
    # Router advertisements ignored: no address of the prefix but the static one.
    assert "dynamic" not in addrs and addrs.count(PREFIX) == 1, addrs

    t.step("SLAAC next to the static address")
    # The link goes down and up for a router solicitation (a down link loses its addresses);
    # the static address comes back once SLAAC has one (the advertised default route is the
    # same gateway).
    m.run("echo 1 > /proc/sys/net/ipv6/conf/eth0/accept_ra && "
          "echo 1 > /proc/sys/net/ipv6/conf/eth0/autoconf && "
          "ip link set eth0 down && ip link set eth0 up")
    wait_for(m, "ip -6 addr show dev eth0 | grep -v tentative", "dynamic")
    m.run(f"ip addr add {STATIC}/128 dev eth0")
    addrs = wait_for(m, "ip -6 addr show dev eth0 | grep -v tentative", f"inet6 {STATIC}/128")
    _, route = m.run("ip -6 route")
    assert f"default via {GATEWAY} dev eth0" in route, route
    # (busybox ip prints the SLAAC address uncompressed: 2001:db8:ab:0:...)
    slaac = [line.split()[1] for line in addrs.splitlines()
             if line.strip().startswith("inet6 2001:db8:ab:") and "dynamic" in line]
    assert slaac and slaac[0].endswith("/64") and slaac[0] != f"{STATIC}/64", addrs
    print(f"    SLAAC address {slaac[0]}, static {STATIC}/128", flush=True)
    fetch6(m, srv, want)

    t.step(f"clock from {WRONG_RTC} to the host's time (rdate from 10.0.2.2)")
    m.network_up()
    m.run(f"rdate -s 10.0.2.2:{clock.port}", timeout=60)
    _, now = m.run("date -u +%s")
    skew = int(now.split()[-1]) - time.time()
    assert abs(skew) < 5 and clock.served == 1, (now, skew)
    print(f"    guest clock within {abs(skew):.1f} s of the host", flush=True)
