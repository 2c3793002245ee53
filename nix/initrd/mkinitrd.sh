# Builds the initrd: busybox, the init script (init.sh), the kernel modules it needs in
# dependency order, and optional extra static programs; written as a newc cpio by this script
# itself (sorted, uid/gid 0, fixed mtime, sequential inode numbers, so the same inputs give the
# same bytes), then gzip -9 -n.
#
# Shared by the fixture (run by a static busybox sh, nothing else available) and the production
# expression (run by stdenv's bash). Every tool is called through "$busybox", so the result does not
# depend on the build environment.
#
# Inputs (environment):
#   busybox        path of a statically linked busybox
#   initScript     path of init.sh
#   moduleDir      the kernel's lib/modules/<version> directory (modules.dep, modules.builtin and
#                  the module files); unused when modules is empty
#   kernelVersion  <version> (the directory name the modules go to in the initrd: uname -r)
#   modules        required module names or aliases (space separated), e.g. "virtio_blk squashfs";
#                  dependencies are added from modules.dep, soft dependencies from modules.softdep;
#                  modules built into the kernel (modules.builtin) are skipped; a name that is none
#                  of these fails the build, naming the kernel version
#   optionalModules  the same, but a name this kernel does not have is skipped with a note
#                  (e.g. "crc32c": crc32c_generic before Linux 6.16, crc32c-cryptoapi since)
#   extraBins      static programs copied into /bin (space separated paths), e.g. mkfs.ext4 e2fsck
#   extraTrees     directories whose contents are copied into the initrd's root (space separated),
#                  e.g. dynamically linked programs with their libraries and loader
#   out            the output: a directory; the initrd is written to $out/initrd
#   SOURCE_DATE_EPOCH  mtime of every entry (default 1)

set -eu
umask 022
bb=$busybox
mtime=${SOURCE_DATE_EPOCH:-1}

fail() {
    echo "mkinitrd: error: $*" >&2
    exit 1
}

work=$($bb pwd)/initrd-root
$bb mkdir -p "$work/bin" "$work/dev" "$work/proc" "$work/sys" "$work/run" "$work/sysroot" \
    "$work/etc/abinit" "$work/tmp"
$bb ln -s bin "$work/sbin"

# busybox and its applets
$bb cp "$bb" "$work/bin/busybox"
$bb chmod 0755 "$work/bin/busybox"
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || $bb ln -s busybox "$work/bin/$applet"
done

# extra programs (must be static: the initrd has no dynamic loader)
for prog in ${extraBins:-}; do
    $bb cp "$prog" "$work/bin/${prog##*/}"
    $bb chmod 0755 "$work/bin/${prog##*/}"
done

# extra trees (directory modes are normalised below)
for tree in ${extraTrees:-}; do
    $bb cp -dR "$tree/." "$work/"
    $bb chmod -R u+w "$work"
done
$bb ln -s /proc/mounts "$work/etc/mtab"

# init
$bb cp "$initScript" "$work/init"
$bb chmod 0755 "$work/init"

# kernel modules, dependencies first. A name is a module (modules.dep), built in
# (modules.builtin) or an alias (modules.alias, exact match: "crypto-crc32c" names every module
# providing it); each module's soft dependencies (modules.softdep) are added like optional names.
# Only modules.dep is required: a missing builtin/alias/softdep file reads as empty.
: > "$work/etc/abinit/modules"
if [ -n "${modules:-}${optionalModules:-}" ]; then
    moddir=$moduleDir
    [ -f "$moddir/modules.dep" ] || fail "$moddir/modules.dep not found"
    order=$($bb awk -v want="${modules:-}" -v maybe="${optionalModules:-}" -v dir="$moddir" '
        function modname(p,   n) {
            n = p; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); return n
        }
        function words(s, a,   n) { return split(s, a, " ") }
        # Adds what name stands for; 0 when it is nothing this kernel has.
        function resolve(name,   m, n, a, i, found) {
            m = name; gsub(/-/, "_", m)
            if (m in path) { visit(path[m]); return 1 }
            if (m in builtin) return 1
            n = words(alias[name], a)
            for (i = 1; i <= n; i++) {
                if (a[i] in path) { visit(path[a[i]]); found = 1 }
                else if (a[i] in builtin) found = 1
            }
            return found
        }
        function visit(p,   i, n, d, m) {
            if (p in seen) return
            seen[p] = 1
            m = modname(p)
            n = words(pre[m], d)
            for (i = 1; i <= n; i++) resolve(d[i])
            n = words(deps[p], d)
            for (i = 1; i <= n; i++) visit(d[i])
            print p
            n = words(post[m], d)
            for (i = 1; i <= n; i++) resolve(d[i])
        }
        BEGIN {
            while ((getline l < (dir "/modules.dep")) > 0) {
                p = l; sub(/:.*/, "", p)
                d = l; sub(/^[^:]*:[ ]*/, "", d)
                deps[p] = d
                path[modname(p)] = p
            }
            while ((getline l < (dir "/modules.builtin")) > 0) builtin[modname(l)] = 1
            while ((getline l < (dir "/modules.alias")) > 0) {
                if (words(l, a) >= 3 && a[1] == "alias") { m = a[3]; gsub(/-/, "_", m); alias[a[2]] = alias[a[2]] " " m }
            }
            while ((getline l < (dir "/modules.softdep")) > 0) {
                n = words(l, a)
                if (n < 3 || a[1] != "softdep") continue
                m = a[2]; gsub(/-/, "_", m); where = ""
                for (i = 3; i <= n; i++) {
                    if (a[i] == "pre:" || a[i] == "post:") where = a[i]
                    else if (where == "pre:") pre[m] = pre[m] " " a[i]
                    else if (where == "post:") post[m] = post[m] " " a[i]
                }
            }
            n = words(want, w)
            for (i = 1; i <= n; i++) if (!resolve(w[i])) { print "MISSING " w[i]; bad = 1 }
            n = words(maybe, w)
            for (i = 1; i <= n; i++) if (!resolve(w[i])) print "ABSENT " w[i]
            exit bad
        }') || fail "kernel $kernelVersion has no module, built-in module or alias named:$(echo "$order" | $bb sed -n 's/^MISSING / /p' | $bb tr -d '\n') (in $moddir; mark a module that may be absent as optional)"
    for m in $(echo "$order" | $bb sed -n 's/^ABSENT //p'); do
        echo "mkinitrd: optional module $m: not in kernel $kernelVersion, skipped" >&2
    done
    order=$(echo "$order" | $bb grep -v '^ABSENT ' || true)
    for m in $order; do
        src=$moddir/$m
        [ -f "$src" ] || fail "kernel $kernelVersion: $m is in modules.dep but not in $moddir"
        dst=${m%.ko*}.ko
        $bb mkdir -p "$work/lib/modules/$kernelVersion/${dst%/*}"
        case "$m" in
            *.ko) $bb cp "$src" "$work/lib/modules/$kernelVersion/$dst" ;;
            *.ko.xz) $bb unxz -c "$src" > "$work/lib/modules/$kernelVersion/$dst" ;;
            *.ko.gz) $bb gunzip -c "$src" > "$work/lib/modules/$kernelVersion/$dst" ;;
            *.ko.zst) zstd -d -c "$src" > "$work/lib/modules/$kernelVersion/$dst" ||
                fail "cannot decompress $m (zstd needed)" ;;
            *) fail "unknown module file type: $m" ;;
        esac
        $bb chmod 0644 "$work/lib/modules/$kernelVersion/$dst"
        echo "$dst" >> "$work/etc/abinit/modules"
    done
fi

$bb find "$work" -type d -exec $bb chmod 0755 {} \;

# --- newc writer ---------------------------------------------------------------------------
ino=0
pad4() {
    case $(($1 % 4)) in
        1) $bb printf '\0\0\0' ;;
        2) $bb printf '\0\0' ;;
        3) $bb printf '\0' ;;
    esac
}
# entry NAME MODE_HEX SIZE RDEVMAJOR RDEVMINOR NLINK: header and name (data follows)
entry() {
    ino=$((ino + 1))
    namesize=$((${#1} + 1))
    $bb printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "0x$2" 0 0 "$6" "$mtime" "$3" 0 0 "$4" "$5" "$namesize" 0
    $bb printf '%s\0' "$1"
    pad4 $((110 + namesize))
}
write_cpio() {
    # /dev/console must exist before init runs so that the kernel gives PID 1 a console.
    entry dev 41ed 0 0 0 2
    entry dev/console 2180 0 5 1 1
    (cd "$work" && $bb find . ! -path . ! -path ./dev | $bb sed 's|^\./||' | LC_ALL=C $bb sort) |
    while read -r f; do
        p=$work/$f
        if [ -L "$p" ]; then
            t=$($bb readlink "$p")
            entry "$f" a1ff "${#t}" 0 0 1
            $bb printf '%s' "$t"
            pad4 "${#t}"
        elif [ -d "$p" ]; then
            mode=$($bb stat -c %f "$p")
            entry "$f" "$mode" 0 0 0 2
        elif [ -f "$p" ]; then
            mode=$($bb stat -c %f "$p")
            size=$($bb stat -c %s "$p")
            entry "$f" "$mode" "$size" 0 0 1
            $bb cat "$p"
            pad4 "$size"
        else
            fail "unsupported file type: $f"
        fi
    done
    ino=-1
    entry TRAILER!!! 0 0 0 0 1
}

$bb mkdir -p "$out"
write_cpio | $bb gzip -9 -n > "$out/initrd"
echo "mkinitrd: $(cd "$work" && $bb find . | $bb wc -l) entries, modules: $($bb tr '\n' ' ' < "$work/etc/abinit/modules")"
