#!/usr/bin/env python3
"""A slow link for scripts/bench-delta.sh: a TCP relay on 127.0.0.1 in front of the benchmark's
nginx that behaves like a network path with a round-trip time and a bandwidth.

Usage: link.py UPSTREAM_PORT RTT_MS MBIT CONN_LOG
Listens on a free port of 127.0.0.1 (printed on stdout, then runs until killed), relays each
connection to 127.0.0.1:UPSTREAM_PORT and appends one line to CONN_LOG per connection.

The model, per direction (client to server, server to client): one bottleneck of MBIT Mbit/s
shared by every connection (bytes leave it one after the other, at that rate), then RTT_MS / 2
of propagation delay. A new connection's first bytes are also held one round trip (TCP's
handshake, which on loopback costs nothing). So a request and its answer cost at least one
round trip plus their bytes at the rate. Not modelled: TCP slow start, loss, the window limit.
"""
import collections, socket, sys, threading, time

CHUNK = 16384  # at 100 Mbit/s one chunk is 1.3 ms on the wire: fine-grained enough pacing
QUEUE = 64  # chunks held in the link per direction (1 MiB: more than a 50 ms x 100 Mbit/s path holds)


class Pipe:
    """One direction's bottleneck: when the next byte can start on the wire."""

    def __init__(self, rate):
        self.rate, self.free, self.lock = rate, 0.0, threading.Lock()

    def departure(self, now, n):
        with self.lock:
            start = max(now, self.free)
            self.free = start + n / self.rate
            return self.free


def relay(src, dst, pipe, delay, not_before):
    """Reads src, delivers each chunk to dst when it has crossed the link."""
    q = collections.deque()
    cv = threading.Condition()
    done = []

    def reader():
        try:
            while True:
                b = src.recv(CHUNK)
                if not b:
                    break
                at = max(pipe.departure(time.monotonic(), len(b)), not_before) + delay
                with cv:
                    while len(q) >= QUEUE:
                        cv.wait()
                    q.append((at, b))
                    cv.notify_all()
        except OSError:
            pass
        with cv:
            done.append(True)
            cv.notify_all()

    threading.Thread(target=reader, daemon=True).start()
    try:
        while True:
            with cv:
                while not q and not done:
                    cv.wait()
                if not q:
                    break
                at, b = q.popleft()
                cv.notify_all()
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            dst.sendall(b)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # The other side went away: end both directions.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client, upstream_port, up, down, delay, rtt, log):
    with open(log, "a") as f:
        f.write("connection\n")
    try:
        server = socket.create_connection(("127.0.0.1", upstream_port))
    except OSError:
        client.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = time.monotonic() + rtt
    t = threading.Thread(target=relay, args=(client, server, up, delay, hello), daemon=True)
    t.start()
    relay(server, client, down, delay, 0.0)
    t.join()
    client.close()
    server.close()


def main():
    upstream_port, rtt_ms, mbit, log = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    rtt, rate = rtt_ms / 1000, mbit * 1e6 / 8
    up, down = Pipe(rate), Pipe(rate)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))  # loopback only
    ls.listen(64)
    print(ls.getsockname()[1], flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c, upstream_port, up, down, rtt / 2, rtt, log), daemon=True).start()


if __name__ == "__main__":
    main()
