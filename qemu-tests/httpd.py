"""A small HTTP/1.1 file server for the scenarios, on the host's loopback only. The guest
reaches it through QEMU's user networking with `restrict=on` (no route anywhere else) and a
guestfwd of 10.0.2.100:80 (`Machine.start(http=...)`), so no byte of an update leaves the host.

Serves the files of one directory with what abupdate's delta apply needs from a static server:
one byte range per request (206 with Content-Range), an ETag, kept-alive connections. It keeps a
log of every request with the body bytes it sent, and can stall: stop sending range bodies once
it has sent a given number of their bytes, so that a scenario can cut the power in the middle of
a download.

Run as a script (`httpd.py relay PORT`) it is the guestfwd command: QEMU starts it for each
connection the guest opens to 10.0.2.100:80, with that connection on stdin and stdout (and
stderr), and it relays the bytes both ways to 127.0.0.1:PORT.
"""

import http.server
import os
import re
import select
import socket
import socketserver
import sys
import threading

PIECE = 64 * 1024
GUEST_ADDR = "10.0.2.100"


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, root, host="127.0.0.1"):
        if ":" in host:  # "::1": the IPv6 loopback
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), Handler)
        self.root = root
        self.port = self.server_address[1]
        self.lock = threading.Lock()
        self.requests = []  # dicts: method, path, range, status, sent (body bytes)
        self.stall_at = None  # the file offset range bodies stop before
        self.stalled = threading.Event()
        self.released = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, name):
        return f"http://{GUEST_ADDR}/{name}"

    def sent(self, since=0):
        """Body bytes sent for the requests from number `since` on."""
        with self.lock:
            return sum(r["sent"] for r in self.requests[since:])

    def log(self, since=0):
        with self.lock:
            return [dict(r) for r in self.requests[since:]]

    def count(self):
        with self.lock:
            return len(self.requests)

    def stall(self, at):
        """From now on, a range body that holds the file's byte `at` stops just before it (the
        connection stays open, nothing more comes); `stalled` is set then. Other ranges go on:
        by offset, not by bytes sent, so ranges fetched side by side are cut the same way on
        every run."""
        with self.lock:
            self.stall_at = at
            self.stalled.clear()
            self.released.clear()

    def release(self):
        with self.lock:
            self.stall_at = None
        self.released.set()

    def stop(self):
        self.release()
        self.shutdown()
        self.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.reply(body=False)

    def do_GET(self):
        self.reply(body=True)

    def reply(self, body):
        srv = self.server
        entry = {"method": self.command, "path": self.path, "range": self.headers.get("Range"),
                 "status": None, "sent": 0}
        with srv.lock:
            srv.requests.append(entry)
        name = os.path.basename(self.path.split("?", 1)[0])
        path = os.path.join(srv.root, name)
        if not name or not os.path.isfile(path):
            entry["status"] = 404
            self.send_error(404)
            return
        st = os.stat(path)
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        start, end, status = 0, size, 200
        asked = entry["range"]
        if asked is not None:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", asked.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                entry["status"] = 416
                self.send_error(416)
                return
            if m.group(1) == "":  # the last N bytes
                start, end = max(0, size - int(m.group(2))), size
            else:
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            if start >= size or end <= start:
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            at = start
            while at < end:
                n = min(PIECE, end - at)
                if status == 206:
                    n = self.allowance(at, n)
                data = f.read(n)
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True
                    return
                at += len(data)
                with srv.lock:
                    entry["sent"] += len(data)

    def allowance(self, at, n):
        """How many of the `n` range bytes from file offset `at` may go out now; blocks while
        the next one is the stall's."""
        srv = self.server
        while True:
            with srv.lock:
                stop = srv.stall_at
                if stop is None or stop < at or stop >= at + n:
                    return n
                if stop > at:
                    return stop - at
                srv.stalled.set()
            srv.released.wait(1.0)


def relay(port):
    """stdin/stdout (QEMU's end of one guest connection) <-> 127.0.0.1:port."""
    # stderr is the guest's connection too: nothing may be printed there.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sock = socket.create_connection(("127.0.0.1", port))
    guest_in, guest_out = 0, 1
    open_ends = {guest_in, sock.fileno()}
    while open_ends:
        ready, _, _ = select.select(list(open_ends), [], [])
        for fd in ready:
            if fd == guest_in:
                data = os.read(guest_in, PIECE)
                if not data:
                    open_ends.discard(guest_in)
                    sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(data)
            else:
                data = sock.recv(PIECE)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(guest_out, view):]
                    except OSError:
                        return


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "relay":
        sys.exit("usage: httpd.py relay PORT")
    relay(int(sys.argv[2]))
