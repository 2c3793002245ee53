"""QEMU harness for the end-to-end scenarios: boots a disk image under TCG with OVMF (UEFI) or
QEMU's default SeaBIOS (legacy BIOS), drives the guest's root shell over the serial console,
and can pull the plug.

The guest is the Nix fixture system (nix/fixture): after boot-check, the health check and
mark-good it prints `ABTEST READY slot=<x> version=<v>` and runs a root shell on ttyS0.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import httpd

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# Firmware choices: OVMF (UEFI, code + variable store as pflash) or QEMU's built-in SeaBIOS
# (legacy BIOS: no pflash drives at all). A (code, vars) pair selects another OVMF build.
OVMF = (OVMF_CODE, OVMF_VARS)
SEABIOS = "seabios"
READY = re.compile(rb"ABTEST READY slot=([ab]) version=(\S+)")


class GuestError(Exception):
    pass


_KVM = None


def kvm_works():
    """KVM is used only if a probe with a timeout shows a kernel starting under it (on some
    hosts /dev/kvm exists but hangs). ABTEST_ACCEL=tcg|kvm skips the probe."""
    global _KVM
    forced = os.environ.get("ABTEST_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced == "kvm"
    if _KVM is None:
        _KVM = False
        kernel = os.environ.get("ABTEST_KERNEL")
        if os.path.exists("/dev/kvm") and kernel:
            p = subprocess.Popen(
                ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-nographic",
                 "-nodefaults", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                 "-kernel", kernel, "-append", "console=ttyS0 panic=-1"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:
                out, _ = p.communicate(timeout=20)
                _KVM = b"Linux version" in out
            except subprocess.TimeoutExpired:
                # A hung KVM guest may not even die on SIGKILL: do not wait for it.
                p.kill()
        print(f"harness: accelerator {'kvm' if _KVM else 'tcg'}", flush=True)
    return _KVM


class Machine:
    """One virtual machine: a disk image, an optional second disk (the update medium), and
    under OVMF its own copy of the UEFI variable store, kept across reboots and power cuts.
    `firmware` is OVMF (the default), SEABIOS ("seabios") or an OVMF (code, vars) pair; `start`
    can switch it (and the RAM) between power-ons of the same disk."""

    def __init__(self, workdir, disk, log_name, memory="512", firmware=OVMF, machine="q35",
                 watchdog=False):
        self.workdir = workdir
        self.disk = disk
        self.memory = memory
        self.firmware = firmware
        self.machine_type = machine
        # An i6300esb hardware watchdog (QEMU's default action when it fires: reset).
        self.watchdog = watchdog
        self.media = None
        self.proc = None
        self.buf = bytearray()
        self.pos = 0  # everything before this offset has been consumed by expect()
        self.stamps = []  # (end offset in buf, time.monotonic()) of each chunk read
        self.lock = threading.Condition()
        self.log_path = os.path.join(workdir, log_name)
        self.log = open(self.log_path, "ab")
        self.qmp_path = os.path.join(workdir, f"{log_name}.qmp")
        self.vars = os.path.join(workdir, "OVMF_VARS.fd")  # made at the first OVMF power-on
        self.accel = "kvm" if kvm_works() else "tcg"
        self.seq = 0

    def start(self, media=(), firmware=None, memory=None, rtc=None, http=None, ipv6=None,
              web=False, copies=(), copies_first=False):
        """Powers on. `media` are files attached read-only as /dev/vdb, /dev/vdc, ... (bundles
        on a USB stick or an extra disk: the offline update case). `firmware` and `memory`,
        if given, replace the machine's from this power-on on (the same disk under another
        firmware). `rtc`: the guest clock's time at power-on (QEMU -rtc base=, e.g.
        "2026-11-28T12:00:00"), default the host's. `http`: an `httpd.Server` the guest
        reaches as http://10.0.2.100/ (its only network: `network_up` configures it);
        without it the machine has no NIC. `ipv6`: instead, a dual-stack user network (below)
        whose router advertises the /64 `ipv6` (e.g. "2001:db8:ab::"), for SLAAC. `web`:
        forward a free port of the host's 127.0.0.1 (`self.web_port`) to the guest's
        10.0.2.15:80 (after `network_up`), for `web_get`. `copies`: more disk images attached
        writable (a second disk holding a copy of the image), after the machine's own disk or,
        with `copies_first`, before it (so the first copy is /dev/vda); with copies, the
        machine's disk is the firmware's first boot device (bootindex=0) either way."""
        self.media = media
        if firmware is not None:
            self.firmware = firmware
        if memory is not None:
            self.memory = str(memory)
        cmd = [
            "qemu-system-x86_64", "-accel", self.accel, "-m", self.memory, "-smp", "1",
            "-machine", self.machine_type, "-nographic", "-no-user-config", "-nodefaults",
            "-serial", "stdio", "-monitor", "none",
        ]
        hostfwd = ""
        if web:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.web_port = probe.getsockname()[1]
            hostfwd = f",hostfwd=tcp:127.0.0.1:{self.web_port}-10.0.2.15:80"
        if ipv6 is not None:
            # Without restrict=on, so that the guest's packets to the host pass: 10.0.2.2 and
            # every address of the prefix but ::3 (QEMU's DNS) are the host's loopback (127.0.0.1,
            # ::1). A scenario gives the guest no other address to talk to and queries no DNS,
            # so nothing leaves the host.
            netdev = f"user,id=n0,ipv4=on,ipv6=on,ipv6-prefix={ipv6},ipv6-prefixlen=64{hostfwd}"
            cmd += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
        elif http is None and web:
            # The same isolated user network; only the forwarded port reaches the guest.
            cmd += ["-netdev", f"user,id=n0,restrict=on{hostfwd}",
                    "-device", "virtio-net-pci,netdev=n0,romfile="]
        elif http is None:
            cmd += ["-nic", "none"]
        else:
            # User networking with restrict=on: the guest reaches nothing but the guestfwd
            # address, whose connections QEMU hands to a relay to the loopback server (one
            # relay per connection). romfile= drops the NIC's boot ROM (no network boot try).
            relay = f"{sys.executable} {os.path.abspath(httpd.__file__)} relay {http.port}"
            netdev = (f"user,id=n0,restrict=on,"
                      f"guestfwd=tcp:{httpd.GUEST_ADDR}:80-cmd:{relay.replace(',', ',,')}"
                      f"{hostfwd}")
            cmd += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
        if self.firmware != SEABIOS:
            code, vars_template = self.firmware
            if not os.path.exists(self.vars):
                shutil.copy(vars_template, self.vars)
            cmd += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            ]
        if copies:
            own = ["-drive", f"file={self.disk},if=none,format=raw,cache=unsafe,id=disk0",
                   "-device", "virtio-blk-pci,drive=disk0,bootindex=0"]
            others = []
            for i, copy in enumerate(copies):
                others += ["-drive", f"file={copy},if=none,format=raw,cache=unsafe,id=copy{i}",
                           "-device", f"virtio-blk-pci,drive=copy{i}"]
            # PCI slots go in command-line order, and the guest names the disks in that order.
            cmd += others + own if copies_first else own + others
        else:
            cmd += ["-drive", f"file={self.disk},if=virtio,format=raw,cache=unsafe,id=disk0"]
        cmd += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        for medium in media:
            cmd += ["-drive", f"file={medium},if=virtio,format=raw,readonly=on"]
        if rtc:
            cmd += ["-rtc", f"base={rtc}"]
        if self.watchdog:
            cmd += ["-device", "i6300esb"]
        self.log.write(f"\n===== power on ({self.firmware_name()}): {' '.join(cmd)}\n".encode())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        with self.lock:
            self.buf.clear()
            self.pos = 0
            self.stamps = []
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def firmware_name(self):
        return "seabios" if self.firmware == SEABIOS else "ovmf"

    def _pump(self, proc):
        while True:
            data = proc.stdout.read1(65536)
            if not data:
                break
            self.log.write(data)
            self.log.flush()
            with self.lock:
                self.buf += data
                self.stamps.append((len(self.buf), time.monotonic()))
                self.lock.notify_all()
        with self.lock:
            self.lock.notify_all()

    def expect(self, pattern, timeout):
        """Waits for `pattern` (bytes regex) in new output; returns the match."""
        rx = re.compile(pattern) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(f"timed out after {timeout}s waiting for {rx.pattern!r}")
                if self.proc.poll() is not None and not rx.search(self.buf, self.pos):
                    raise GuestError(f"QEMU exited waiting for {rx.pattern!r}")
                self.lock.wait(min(left, 1.0))

    def offset(self):
        """How much output there is so far (for `seen`)."""
        with self.lock:
            return len(self.buf)

    def output(self, since=0):
        """The output since power-on, from offset `since`."""
        with self.lock:
            return bytes(self.buf[since:])

    def seen(self, pattern, since=0):
        """When `pattern` (bytes regex) was first printed after offset `since` of the output
        since power-on: the arrival time (time.monotonic()) of its end, or None."""
        with self.lock:
            m = re.compile(pattern).search(self.buf, since)
            if not m:
                return None
            return next(t for end, t in self.stamps if end >= m.end())

    def wait_ready(self, timeout=300):
        """Waits for the fixture's READY line; returns (slot, version)."""
        m = self.expect(READY, timeout)
        time.sleep(0.5)  # let the shell print its prompt
        return m.group(1).decode(), m.group(2).decode()

    def run(self, command, timeout=120, check=True):
        """Runs a shell command in the guest; returns (exit status, output)."""
        self.seq += 1
        tag = f"T{self.seq}x{os.getpid()}"
        # The marker is split in the command so the echoed command line never matches.
        line = f"{command}; echo \"@@{tag}\"'@@'$?'@@'\n"
        with self.lock:
            self.pos = sent = len(self.buf)
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        m = self.expect(re.compile(rb"@@" + tag.encode() + rb"@@(\d+)@@"), timeout)
        with self.lock:
            # From the send on: a long command's echo is wrapped by the console, so the search
            # below can miss it, and then nothing of the boot log may come along.
            text = bytes(self.buf[sent: m.start()])
        out = text.decode(errors="replace")
        # Output starts after the echoed command line.
        first = out.rfind(command[-20:])
        out = out[first + len(command[-20:]):] if first >= 0 else out
        out = re.sub(r"\r", "", out).split("\n", 1)[-1] if "\n" in out else ""
        status = int(m.group(1))
        if check and status != 0:
            raise GuestError(f"`{command}` exited {status}:\n{out}")
        return status, out

    def network_up(self):
        """Gives the guest's NIC (virtio-net, `start(http=...)`) QEMU's usual guest address;
        no DHCP, no route beyond the user network's own subnet (the server is in it)."""
        self.run("ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0")

    def web_get(self, path="/", timeout=60):
        """GET http://127.0.0.1:<web_port><path> from the host (`start(web=True)`): the body."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=30) as r:
                    return r.read()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def status_json(self):
        _, out = self.run("abupdate status --json 2>/dev/null")
        start = out.find("{")
        return json.loads(out[start: out.rfind("}") + 1])

    def qmp(self, command, **arguments):
        """One QMP command to the running QEMU; returns its "return" value."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(self.qmp_path)
            f = sock.makefile("rwb")
            json.loads(f.readline())  # greeting
            reply = None
            for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                f.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break  # (events are skipped)
                if "error" in reply:
                    raise GuestError(f"QMP {cmd}: {reply['error']}")
            return reply["return"]

    def grow_disk(self, extra):
        """Makes the disk `extra` bytes larger while the machine runs (the guest kernel sees
        the new capacity at once), as a VPS provider's resize does."""
        self.qmp("block_resize", device="disk0", size=os.path.getsize(self.disk) + extra)

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def reboot(self):
        self.send("reboot -f\n")

    def kill(self):
        """Pulls the plug: SIGKILL, no flush of the guest's caches (cache=unsafe on the host
        side only loses what the guest had not written)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.log.write(b"\n===== power cut (SIGKILL)\n")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.flush()


# --- The disk image seen from the host, between power-offs ------------------------------------

def esp_file(disk, path):
    """Where the ESP file `path` (like "grub/env1") is in the disk image `disk`: (byte offset of
    its first byte, its size). Reads the GPT (the ESP is partition 1) and the FAT32 directories;
    the file must fit in its first cluster (GRUB's env blocks are one sector)."""
    with open(disk, "rb") as f:
        def at(offset, n):
            f.seek(offset)
            return f.read(n)

        gpt = at(512, 92)
        assert gpt[:8] == b"EFI PART", "no GPT header at LBA 1"
        entries_lba = int.from_bytes(gpt[72:80], "little")
        esp = int.from_bytes(at(entries_lba * 512 + 32, 8), "little") * 512
        bpb = at(esp, 512)
        sector = int.from_bytes(bpb[11:13], "little")
        per_cluster = bpb[13] * sector
        reserved = int.from_bytes(bpb[14:16], "little") * sector
        fat_size = int.from_bytes(bpb[36:40], "little") * sector
        assert int.from_bytes(bpb[22:24], "little") == 0 and fat_size, "the ESP is not FAT32"
        data = esp + reserved + bpb[16] * fat_size

        def cluster(c):
            return data + (c - 2) * per_cluster

        def chain(c):
            while 2 <= c < 0x0FFFFFF8:
                yield c
                c = int.from_bytes(at(esp + reserved + 4 * c, 4), "little") & 0x0FFFFFFF

        c = int.from_bytes(bpb[44:48], "little")  # the root directory
        size = None
        for name in path.upper().split("/"):
            base, _, ext = name.partition(".")
            want = base.ljust(8).encode() + ext.ljust(3).encode()
            found = None
            for dc in chain(c):
                block = at(cluster(dc), per_cluster)
                for i in range(0, per_cluster, 32):
                    e = block[i:i + 32]
                    if e[0] == 0:
                        break
                    if e[0] != 0xE5 and e[11] != 0x0F and e[:11] == want:
                        found = e
                        break
                if found:
                    break
            assert found, f"{path} not found on the ESP of {disk}"
            c = (int.from_bytes(found[20:22], "little") << 16) | int.from_bytes(found[26:28], "little")
            size = int.from_bytes(found[28:32], "little")
        assert size <= per_cluster, f"{path} is larger than a cluster"
        return cluster(c), size


def partition_guids(disk):
    """{label: unique partition GUID (lower case)} from the primary GPT of the disk image
    `disk` (512-byte sectors), and "disk" for the disk GUID."""
    def text(g):
        return str(uuid.UUID(bytes_le=bytes(g)))
    with open(disk, "rb") as f:
        f.seek(512)
        header = f.read(92)
        assert header[:8] == b"EFI PART", f"{disk}: no GPT"
        array_lba, count, size = struct.unpack_from("<QII", header, 72)
        f.seek(array_lba * 512)
        array = f.read(count * size)
    guids = {"disk": text(header[56:72])}
    for i in range(count):
        e = array[i * size:(i + 1) * size]
        if any(e[:16]):
            guids[e[56:128].decode("utf-16-le").split("\0")[0]] = text(e[16:32])
    return guids


def grub_env(disk, copy):
    """GRUB env copy `copy` (1 or 2) of a GRUB disk image: its variables as a dict, or None if
    it is not an environment block."""
    offset, size = esp_file(disk, f"grub/env{copy}")
    with open(disk, "rb") as f:
        f.seek(offset)
        block = f.read(size)
    if not block.startswith(b"# GRUB Environment Block\n"):
        return None
    lines = block.split(b"\n")[1:]
    return dict(line.decode(errors="replace").split("=", 1) for line in lines if b"=" in line)


def damage_grub_env(disk, copy, garbage=b"\x00" * 512):
    """Overwrites GRUB env copy `copy` of a powered-off disk image in place with `garbage`."""
    offset, size = esp_file(disk, f"grub/env{copy}")
    with open(disk, "r+b") as f:
        f.seek(offset)
        f.write(garbage[:size].ljust(size, b"\x00"))


# --- dm-verity on a powered-off disk (docs/updater.md, "A damaged slot") ----------------------

def partition(disk, label):
    """(byte offset, byte size) of the GPT partition named `label` in the disk image."""
    with open(disk, "rb") as f:
        f.seek(512)
        gpt = f.read(92)
        assert gpt[:8] == b"EFI PART", "no GPT header at LBA 1"
        lba = int.from_bytes(gpt[72:80], "little")
        count = int.from_bytes(gpt[80:84], "little")
        size = int.from_bytes(gpt[84:88], "little")
        for i in range(count):
            f.seek(lba * 512 + i * size)
            e = f.read(size)
            if e[56:128].decode("utf-16-le").rstrip("\0") == label:
                first = int.from_bytes(e[32:40], "little")
                last = int.from_bytes(e[40:48], "little")
                return first * 512, (last - first + 1) * 512
    raise AssertionError(f"no partition {label} in {disk}")


def _esp_spec(disk):
    offset, _ = partition(disk, "esp")
    return f"{disk}@@{offset}"


def slot_cmdline_file(disk, slot):
    """The ESP file holding slot `slot`'s kernel command line: GRUB's `X/cmdline.cfg`, else
    the slot's systemd-boot entry (the one in loader/entries whose name starts slot-X)."""
    spec = _esp_spec(disk)
    cfg = f"{slot}/cmdline.cfg"
    if subprocess.run(["mtype", "-i", spec, f"::/{cfg}"], capture_output=True).returncode == 0:
        return cfg
    names = subprocess.run(["mdir", "-b", "-i", spec, "::/loader/entries"], check=True,
                           capture_output=True, text=True).stdout.split()
    mine = [n.rsplit("/", 1)[-1] for n in names if n.rsplit("/", 1)[-1].startswith(f"slot-{slot}")]
    assert len(mine) == 1, f"slot {slot} has entries {mine}"
    return f"loader/entries/{mine[0]}"


def slot_cmdline(disk, slot):
    spec = _esp_spec(disk)
    return subprocess.run(["mtype", "-i", spec, f"::/{slot_cmdline_file(disk, slot)}"],
                          check=True, capture_output=True, text=True).stdout


def add_verity(disk, slot, workdir):
    """Test-only stand-in for the builder's dm-verity (until slots come with their tree): on a
    powered-off disk, writes the hash area `veritysetup format` makes after slot `slot`'s
    squashfs (zero-padded to 4096 bytes; the area at the padded size) and puts
    abinit.verity=ROOTHASH,SALT,BLOCKS,OFFSET on the slot's kernel command line. A slot whose
    command line has the parameter already is left as it is. Returns the parameter's value."""
    text = slot_cmdline(disk, slot)
    m = re.search(r"abinit\.verity=(\S+?)\"?\s", text + " ")
    if m:
        return m.group(1)
    offset, size = partition(disk, f"root-{slot}")
    with open(disk, "rb") as f:
        f.seek(offset)
        sb = f.read(96)
        assert sb[:4] == b"hsqs", f"slot {slot} holds no squashfs"
        used = int.from_bytes(sb[40:48], "little")
        padded = (used + 4095) // 4096 * 4096
        f.seek(offset)
        image = f.read(used)
    tmp = os.path.join(workdir, f"verity-{slot}.img")
    with open(tmp, "wb") as t:
        t.write(image.ljust(padded, b"\0"))
    salt = hashlib.sha256(image).hexdigest()
    out = subprocess.run(
        ["veritysetup", "format", f"--hash-offset={padded}", f"--data-blocks={padded // 4096}",
         f"--salt={salt}", tmp, tmp], check=True, capture_output=True, text=True).stdout
    root = re.search(r"Root hash:\s+([0-9a-f]{64})", out).group(1)
    with open(tmp, "rb") as t:
        area = t.read()
    os.unlink(tmp)
    assert len(area) <= size, "the slot partition is too small for image and hash tree"
    with open(disk, "r+b") as f:
        f.seek(offset)
        f.write(area)
    value = f"{root},{salt},{padded // 4096},{padded}"
    path = slot_cmdline_file(disk, slot)
    if path.endswith("cmdline.cfg"):
        new = re.sub(r'"\s*$', f' abinit.verity={value}"\n', text.rstrip("\n"))
    else:
        new = re.sub(r"^(options .*)$", rf"\1 abinit.verity={value}", text, flags=re.M)
    assert new != text
    set_slot_cmdline(disk, slot, new, workdir)
    return value


def set_slot_cmdline(disk, slot, text, workdir):
    """Replaces the text of slot `slot`'s command line file (`slot_cmdline_file`)."""
    local = os.path.join(workdir, f"cmdline-{slot}")
    with open(local, "w") as t:
        t.write(text)
    subprocess.run(["mcopy", "-o", "-i", _esp_spec(disk), local,
                    f"::/{slot_cmdline_file(disk, slot)}"], check=True)
    os.unlink(local)


def drop_verity(disk, slot, workdir):
    """Takes abinit.verity= off slot `slot`'s command line (the slot then boots unchecked);
    returns the text before, for `set_slot_cmdline`."""
    text = slot_cmdline(disk, slot)
    new = re.sub(r" abinit\.verity=[^\s\"]+", "", text)
    assert new != text, f"slot {slot} has no abinit.verity="
    set_slot_cmdline(disk, slot, new, workdir)
    return text


def verity_params(value):
    """(root hash, salt, data blocks, hash offset) of an abinit.verity= value."""
    root, salt, blocks, offset = value.split(",")
    return root, salt, int(blocks), int(offset)


def flip_byte(disk, label, at):
    """Flips (xor 0xff) the byte at offset `at` of partition `label` in a powered-off disk."""
    offset, _ = partition(disk, label)
    with open(disk, "r+b") as f:
        f.seek(offset + at)
        b = f.read(1)
        f.seek(offset + at)
        f.write(bytes([b[0] ^ 0xFF]))
