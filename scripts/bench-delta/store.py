#!/usr/bin/env python3
"""Builds the benchmark's systems for scripts/bench-delta.sh: real Debian packages installed
on this machine, each laid out as a Nix store path `nix/store/<hash>-<name>-<version>` (the
package's files from `dpkg -L`, with a leading /usr dropped).

Store hashes follow Nix's rule: a path's hash covers its name, its version and the hashes of
the packages it depends on (Debian's Depends/Pre-Depends within the set, cycles broken), so a
new libssl renames everything above it and a new libc renames everything. References are
real: every ELF file gets, with Debian's patchelf, a RUNPATH listing its package's
dependencies' `lib/x86_64-linux-gnu` store directories and, if it has one, an interpreter in
the libc store path; a script's `#!` line names the store path of the package that ships its
interpreter; an absolute symlink into another package points into that package's store path.

A changed package gets a new store path name (its new version) as well as a new hash, and every
reference to it names that new path; a renamed package's files that hold references are written
again with the new paths (ELF files patched again, so a RUNPATH may change length), as a Nix
rebuild writes them.

Usage: store.py VARIANT DEBDIR OUT_SYS [BASE_SYS]
       store.py check SYS...   (every store path named in SYS's files exists in SYS)
  VARIANT: v1, leaf, lib or libc; DEBDIR holds the other Debian version's .deb of the
  changed packages (none: their ELF files are changed in place as a stand-in, said on stderr).
  With BASE_SYS (the v1 system), the tree is hard-linked from it and only the changed
  packages' files and the renamed packages' files that hold references are written (as new
  files, never in place): what a Nix rebuild does to the store.
"""
import base64, glob, hashlib, os, re, shutil, stat, struct, subprocess, sys

PACKAGES = """libc6 libgcc-s1 libstdc++6 zlib1g libzstd1 liblzma5 libbz2-1.0 liblz4-1 xz-utils zstd
bzip2 gzip tar coreutils bash grep sed findutils diffutils libssl3 openssl libcurl4 curl
libnghttp2-14 libssh2-1 libpsl5 libidn2-0 libunistring2 libbrotli1 libkrb5-3 libgssapi-krb5-2
libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1 libexpat1 libpcre2-8-0 libsqlite3-0 sqlite3
python3.11-minimal libpython3.11-minimal libffi8 libreadline8 libtinfo6 libncursesw6 perl-base
libcrypt1 libselinux1 libacl1 libattr1 libgmp10 nginx""".split()
# What each update pair changes (a Debian source package's binaries move together).
CHANGES = {"v1": [], "leaf": ["xz-utils"], "lib": ["libssl3", "openssl"], "libc": ["libc6"]}
ARCH_LIB = "lib/x86_64-linux-gnu"
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def q(fmt, pkg):
    return subprocess.run(["dpkg-query", "-W", "-f", fmt, pkg], capture_output=True, text=True).stdout


def installed():
    return [p for p in PACKAGES if q("${Status}", p).endswith(" installed")]


def nix32(b):
    n = int.from_bytes(b, "little")
    return "".join(NIX32[(n >> (5 * i)) & 31] for i in range(32))[::-1]


def store_rel(path):
    """/usr/lib/x/y and /lib/x/y -> lib/x/y"""
    p = path[4:] if path.startswith("/usr/") else path
    return p.lstrip("/")


def deb_files(pkg, debdir):
    """(source root, [absolute paths]) of a package: the other version's .deb if DEBDIR has it,
    else the installed files."""
    debs = glob.glob(os.path.join(debdir, f"{pkg}_*.deb")) if debdir else []
    if debs:
        root = os.path.join(debdir, "x-" + pkg)
        if not os.path.isdir(root):
            subprocess.run(["dpkg-deb", "-x", debs[0], root], check=True)
        out = []
        for d, dirs, files in os.walk(root):
            out += [os.path.join(d, f)[len(root):] for f in files]
            out += [os.path.join(d, f)[len(root):] for f in dirs if os.path.islink(os.path.join(d, f))]
        ver = subprocess.run(["dpkg-deb", "-f", debs[0], "Version"], capture_output=True, text=True).stdout.strip()
        return root, sorted(out), ver
    lst = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout.split("\n")
    # (symlinked directories such as /lib -> usr/lib are not files)
    out = [l for l in lst if l.startswith("/") and not os.path.isdir(l) and (os.path.islink(l) or os.path.isfile(l))]
    return "/", sorted(set(out)), q("${Version}", pkg)


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def has_interp(path):
    with open(path, "rb") as f:
        h = f.read(64)
        if len(h) < 64 or h[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", h, 32)
        phentsize, phnum = struct.unpack_from("<HH", h, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", ph, i * phentsize)[0] == 3 for i in range(phnum))


def main():
    variant, debdir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    base = sys.argv[4] if len(sys.argv) > 4 else None
    changed = CHANGES[variant]
    pkgs = installed()
    src = {}
    for p in pkgs:
        src[p] = deb_files(p, debdir if p in changed else None)
        if p in changed and src[p][0] == "/":
            print(f"store.py: no other version of {p} in {debdir}: its ELF files are changed in place instead", file=sys.stderr)
    owner = {}  # store-relative path -> package
    for p in pkgs:
        for f in src[p][1]:
            owner.setdefault(store_rel(f), p)
    deps = {}
    for p in pkgs:
        d = q("${Pre-Depends}, ${Depends}", p)
        names = {re.split(r"[ :(]", a.strip())[0] for a in re.split(r"[,|]", d) if a.strip()}
        deps[p] = sorted(n for n in names if n in pkgs and n != p)
    # Script interpreters are references too.
    shebang = {}
    for p in pkgs:
        root, files, _ = src[p]
        for f in files:
            fp = os.path.join(root, f.lstrip("/"))
            if os.path.islink(fp) or not os.path.isfile(fp):
                continue
            with open(fp, "rb") as fh:
                line = fh.readline(200)
            m = re.match(rb"#! ?(/\S+)", line)
            if m:
                o = owner.get(store_rel(os.path.realpath(m.group(1).decode(errors="replace"))))
                o = o or owner.get(store_rel(m.group(1).decode(errors="replace")))
                if o and o != p:
                    shebang[(p, f)] = o
                    if o not in deps[p]:
                        deps[p].append(o)
    # libc is the bottom (as nixpkgs' glibc: libgcc-s1 depends on it, not the other way); other
    # cycles are broken depth-first in package order.
    deps["libc6"] = []
    order, state = [], {}

    def visit(p):
        state[p] = 1
        for d in list(deps[p]):
            if state.get(d) == 1:
                deps[p].remove(d)
            elif d not in state:
                visit(d)
        state[p] = 2
        order.append(p)

    for p in pkgs:
        if p not in state:
            visit(p)
    name, h = {}, {}
    for p in order:
        ver = src[p][2] + ("+stand-in" if p in changed and src[p][0] == "/" else "")
        key = "\0".join([p, ver] + sorted(h[d] for d in deps[p]))
        h[p] = nix32(hashlib.sha256(key.encode()).digest()[:20])
        name[p] = f"{h[p]}-{p}-{re.sub(r'[^A-Za-z0-9.+_-]', '_', ver)}"
    store = os.path.join(out, "nix/store")
    os.makedirs(store, exist_ok=True)

    def spath(p):
        return "/nix/store/" + name[p]

    def install(p, f, top):
        """One file of package p into its store path `top`, with its references."""
        root = src[p][0]
        sp = os.path.join(root, f.lstrip("/"))
        dp = os.path.join(top, store_rel(f))
        if os.path.lexists(dp):
            return
        os.makedirs(os.path.dirname(dp), exist_ok=True)
        if os.path.islink(sp):
            t = os.readlink(sp)
            o = owner.get(store_rel(t)) if t.startswith("/") else None
            os.symlink(spath(o) + "/" + store_rel(t) if o else t, dp)
            return
        shutil.copy2(sp, dp)
        os.chmod(dp, os.stat(dp).st_mode | stat.S_IWUSR)
        if (p, f) in shebang:
            with open(dp, "rb") as fh:
                line, rest = fh.readline(), fh.read()
            interp = re.match(rb"#! ?(/\S+)", line).group(1)
            new = (spath(shebang[(p, f)]) + "/" + store_rel(interp.decode())).encode()
            with open(dp, "wb") as fh:
                fh.write(line.replace(interp, new, 1) + rest)
        elif is_elf(dp):
            if p in changed and root == "/":
                b = bytearray(open(dp, "rb").read())
                for o in range(4096, len(b), 65536):
                    b[o] ^= 0x55
                open(dp, "wb").write(b)
            args = []
            rpath = ":".join(f"{spath(d)}/{ARCH_LIB}" for d in deps[p])
            if rpath:
                args += ["--set-rpath", rpath]
            if p != "libc6" and "libc6" in name and has_interp(dp):
                args += ["--set-interpreter", f"{spath('libc6')}/{ARCH_LIB}/ld-linux-x86-64.so.2"]
            if args:
                subprocess.run(["patchelf"] + args + [dp], capture_output=True)

    if base:
        # A renamed package is rebuilt as Nix would: its files that hold a reference are written
        # again from the package with the new store paths (name and version, so a reference to
        # a changed package carries its new version and may change length: ELF files get
        # patchelf again, not a byte substitution); its other files are hard links to v1's.
        for p in pkgs:
            old = olds_name(base, p, pkgs)
            if not old:
                sys.exit(f"store.py: {p}: no store path in {base}")
            if p in changed:
                continue
            srcd, dstd = os.path.join(base, "nix/store", old), os.path.join(store, name[p])
            subprocess.run(["cp", "-al", srcd, dstd], check=True)
            if old == name[p]:
                continue
            for f in src[p][1]:
                dp = os.path.join(dstd, store_rel(f))
                if os.path.islink(dp) and os.readlink(dp).startswith("/nix/store/") or has_ref(dp):
                    os.unlink(dp)  # a new file: the hard-linked v1 copy stays as it was
                    install(p, f, dstd)
        todo = changed
    else:
        todo = pkgs
    for p in todo:
        top = os.path.join(store, name[p])
        for f in src[p][1]:
            install(p, f, top)
    print(" ".join(name[p] for p in order))


def has_ref(path):
    """A regular file that names a store path."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return b"/nix/store/" in f.read()


REF = re.compile(rb"/nix/store/([0-9a-z]{32}-[A-Za-z0-9.+_-]+)")


def check(sys_dir):
    """Every store path a file or symlink of SYS_DIR names is one of its store paths: a reference
    that kept a replaced package's old name or version would point at nothing."""
    store = os.path.join(sys_dir, "nix/store")
    have = set(os.listdir(store))
    bad = {}
    for d, dirs, files in os.walk(store):
        for f in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            fp = os.path.join(d, f)
            if os.path.islink(fp):
                refs = REF.findall(os.readlink(fp).encode())
            elif has_ref(fp):
                with open(fp, "rb") as fh:
                    refs = REF.findall(fh.read())
            else:
                continue
            for r in refs:
                if r.decode() not in have:
                    bad.setdefault(r.decode(), []).append(os.path.relpath(fp, store))
    for r, where in sorted(bad.items()):
        print(f"store.py: {len(where)} files name /nix/store/{r}, which is not in {sys_dir} "
              f"(first: {where[0]})", file=sys.stderr)
    return not bad


def olds_name(base, p, pkgs):
    for d in os.listdir(os.path.join(base, "nix/store")):
        if d[33:].startswith(p + "-") and not any(d[33:].startswith(o + "-") and len(o) > len(p) for o in pkgs):
            return d
    return None


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(0 if all(check(d) for d in sys.argv[2:]) else 1)
    main()
