#!/usr/bin/env bash
# Benchmark (issue 12): delta updates through a real HTTP server, against casync, xdelta3 and
# an estimate of RAUC's adaptive updates.
#
# Systems: ~50 real Debian packages installed on this machine, laid out as Nix store paths
# with real references between them (scripts/bench-delta/store.py: patchelf RUNPATH and
# interpreter, #! lines, symlinks). A changed package's store path gets its new version in its
# name as well as a new hash, and every reference names that new path, as Nix writes it
# (store.py check verifies it). Version 1 and three updates, each built with `abbuild build`
# (its defaults: zstd, 128 KiB blocks, -no-fragments, format 2):
#   leaf: xz-utils changes (another Debian build of it: new bytes, new store path);
#   lib:  libssl3 + openssl change, and every package above them gets a new store path with
#         its references rewritten (the Nix rename fan-out);
#   libc: libc6 changes, every store path changes;
#   no-op: version 1's bundle again.
# The changed packages' other versions are fetched with `apt-get download` (the newest version
# apt knows that is not the installed one); where none can be had, store.py changes the
# package's ELF files in place instead and says so.
#
# Each bundle is served by a private nginx on 127.0.0.1 (Range support; its access log gives
# $bytes_sent and the request count) and applied with `abupdate apply http://...` onto a fresh
# copy of the version 1 disk image: as a delta, and with --full (the whole bundle as one
# stream) for the time comparison; the page cache is dropped before each apply, median of
# BENCH_ROUNDS (default 3). Side by side, on the same root images: casync (`casync make` of
# both, the new image's chunk files not in the old one's store plus its .caibx: what a casync
# client fetches), xdelta3 -e -s (the per-pair patch: the floor) and RAUC adaptive, estimated
# (new-image 4 KiB blocks whose SHA-256 is not among the old image's, plus its 32-byte-per-block
# hash index).
#
# BENCH_LINK=1 also applies every pair through a slow link (scripts/bench-delta/link.py, a relay
# on 127.0.0.1 in front of nginx: BENCH_LINK_RTT_MS round-trip time, default 50, and
# BENCH_LINK_MBIT bandwidth, default 100, each way; a new connection costs one round trip more)
# and prints a second table: delta and full apply times on the link beside the loopback ones,
# requests, connections and bytes on the wire, and for the libc pair the goal of issue 21:
# (its bytes on the wire at the link's rate + the full apply's time on loopback) x 1.2.
# BENCH_RATE=12500k serves at that rate (nginx limit_rate: 100 Mbit/s) for the time columns.
# nginx applies it per request after the first second's worth, so it slows the full stream but
# not a delta's small ranges: BENCH_LINK is the faithful link.
# BENCH_1G=1 adds a ~1 GiB root: the same packages plus large real directories of this machine
# (BENCH_1G_DIRS) as store paths without references, and the leaf change. Slow (~10 min).
# Usage: bash scripts/bench-delta.sh   (BENCH_DIR: work directory parent, default /var/tmp;
#        BENCH_LINK=1 bash scripts/bench-delta.sh: with the 50 ms / 100 Mbit/s link)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
rounds=${BENCH_ROUNDS:-3}

need=()
for t in nginx:nginx casync:casync xdelta3:xdelta3 patchelf:patchelf mksquashfs:squashfs-tools \
  cpio:cpio bc:bc python3:python3 /usr/bin/time:time; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if ((${#need[@]})); then
  echo "bench-delta: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
[ -f /bin/busybox ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2

cargo build -q --release -p abbuild -p abupdate
abbuild=$CARGO_TARGET_DIR/release/abbuild
abupdate=$CARGO_TARGET_DIR/release/abupdate
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
cleanup() {
  [ -f "$work/nginx/nginx.pid" ] && kill "$(cat "$work/nginx/nginx.pid")" 2>/dev/null
  [ -n "${link_pid:-}" ] && kill "$link_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "bench-delta: $*" >&2; }

# The other Debian builds of the changed packages.
mkdir -p "$work/debs"
for p in xz-utils libssl3 openssl libc6; do
  inst=$(dpkg-query -W -f '${Version}' "$p")
  v=$(apt-cache madison "$p" | awk -v i="$inst" '$3 != i { print $3 }' | sort -V -r | head -n1)
  if [ -n "$v" ] && (cd "$work/debs" && apt-get download -qq "$p=$v" 2>/dev/null); then
    log "$p: installed $inst, other build $v"
  else
    log "$p: no other version could be downloaded: a stand-in change is used"
  fi
done

# The systems: store paths, a real kernel, a small real initrd (busybox in a cpio), init.
export SOURCE_DATE_EPOCH=1700000000
mkdir -p "$work/initrd/bin" && cp /bin/busybox "$work/initrd/bin/"
# (fixed times: the system directory, initrd included, is packed into the root image)
find "$work/initrd" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$work/initrd" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 2>/dev/null | gzip -n -9) >"$work/initrd.img"
kernel=$(ls /boot/vmlinuz-* | head -n1)
finish_sys() { # finish_sys DIR: kernel, initrd, init
  cp "$kernel" "$1/kernel"
  cp "$work/initrd.img" "$1/initrd"
  ln -s "/nix/store/$(ls "$1/nix/store" | grep -m1 -- '-bash-')/bin/bash" "$1/init"
}
store=$root/scripts/bench-delta/store.py
python3 "$store" v1 "" "$work/sys-v1" >/dev/null
finish_sys "$work/sys-v1"
for v in leaf lib libc; do
  python3 "$store" "$v" "$work/debs" "$work/sys-$v" "$work/sys-v1" >/dev/null
  finish_sys "$work/sys-$v"
done
# No reference may name a path that is not there (a replaced package's old name or version).
python3 "$store" check "$work"/sys-{v1,leaf,lib,libc}

"$abbuild" -q keygen --out-dir "$work/keys" --name bench >/dev/null
mkdir -p "$work/trusted" && cp "$work/keys/bench.pub" "$work/trusted/"
printf 'compatible = "bench"\nkeys = "%s"\nstate-file = "%s/state.json"\n' "$work/trusted" "$work" >"$work/abupdate.toml"
: >"$work/cmdline"
export ABUPDATE_CMDLINE=$work/cmdline ABUPDATE_LOCK=$work/lock
image_def() { # image_def FILE SLOT DISK
  printf 'name = "bench"\ncompatible = "bench"\ndisk-size = "%s"\nesp-size = "40MiB"\nslot-size = "%s"\nboot-backend = "systemd-boot"\n' "$3" "$2" >"$1"
}
image_def "$work/image.toml" 128MiB 320MiB
image_def "$work/image-1g.toml" 1600MiB 3400MiB

www=$work/www
mkdir -p "$www"
build() { # build NAME VERSION IMAGE_DEF: bundle www/NAME.abu, disk, root image rootfs-NAME
  "$abbuild" -q build --image "$3" --system "$work/sys-$1" --version "$2" \
    --key "$work/keys/bench.key" --out-dir "$work/out-$1" >/dev/null
  mv "$work/out-$1/bench-$2.abu" "$www/$1.abu"
  mv "$work/out-$1/bench-$2.img" "$work/disk-$1.img"
  read -r off size < <("$abbuild" inspect --json "$www/$1.abu" | python3 -c 'import json, sys
p = json.load(sys.stdin)["manifest"]["payloads"][0]; print(p["offset"], p["size"])')
  dd if="$www/$1.abu" of="$work/rootfs-$1" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none
}
log "building the images"
build v1 1 "$work/image.toml"
build leaf 2 "$work/image.toml"
build lib 3 "$work/image.toml"
build libc 4 "$work/image.toml"
pairs=(noop leaf lib libc)
declare -A new=([noop]=v1 [leaf]=leaf [lib]=lib [libc]=libc) base=([noop]=v1 [leaf]=v1 [lib]=v1 [libc]=v1)

if [ "${BENCH_1G:-0}" = 1 ]; then
  log "building the 1 GiB root"
  dirs=${BENCH_1G_DIRS:-/usr/lib/x86_64-linux-gnu /usr/share /usr/bin /usr/lib/llvm-14 /usr/lib/gcc /usr/libexec}
  mkdir -p "$work/bulk/nix/store"
  for d in $dirs; do
    [ -d "$d" ] || continue
    h=$(printf '%s' "$d" | sha256sum | tr 0-9a-f 0-9a-dfg-z | head -c 32)
    cp -a "$d" "$work/bulk/nix/store/$h-bulk$(echo "$d" | tr / -)"
  done
  for v in v1 leaf; do
    cp -al "$work/sys-$v" "$work/sys-1g-$v"
    cp -al "$work/bulk/nix/store/." "$work/sys-1g-$v/nix/store/"
  done
  build 1g-v1 1 "$work/image-1g.toml"
  build 1g-leaf 2 "$work/image-1g.toml"
  rm -rf "$work/bulk" "$work/sys-1g-leaf"
  pairs+=(1g-leaf)
  new[1g-leaf]=1g-leaf base[1g-leaf]=1g-v1
fi

# A private nginx: its own prefix, config, logs and a free port; stopped on exit.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
http {
  log_format bench '\$status \$bytes_sent "\$http_range"';
  access_log $work/nginx/access.log bench;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$port; root $www; ${BENCH_RATE:+limit_rate $BENCH_RATE;} }
}
EOF
nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
url=http://127.0.0.1:$port
curl -sf -r 0-0 -o /dev/null "$url/v1.abu" || { log "nginx does not answer"; exit 1; }
log "nginx on $url"
link=${BENCH_LINK:-0} rtt_ms=${BENCH_LINK_RTT_MS:-50} mbit=${BENCH_LINK_MBIT:-100}
: >"$work/conn.log"
if [ "$link" = 1 ]; then
  python3 "$root/scripts/bench-delta/link.py" "$port" "$rtt_ms" "$mbit" "$work/conn.log" >"$work/link.port" &
  link_pid=$!
  for _ in $(seq 50); do [ -s "$work/link.port" ] && break; sleep 0.1; done
  link_url=http://127.0.0.1:$(head -n1 "$work/link.port")
  curl -sf -r 0-0 -o /dev/null "$link_url/v1.abu" || { log "the link does not answer"; exit 1; }
  log "link ($rtt_ms ms, $mbit Mbit/s) on $link_url"
fi

# applied URL NAME BASE [--full]: one apply from URL (nginx, or the link in front of it) onto a
# fresh copy of BASE's disk; prints "seconds peak_rss_kib bytes_sent requests connections"
# (connections: through the link only).
applied() {
  cp --sparse=always "$work/disk-$3.img" "$work/d.img"
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local before conns
  before=$(wc -l <"$work/nginx/access.log")
  conns=$(wc -l <"$work/conn.log")
  /usr/bin/time -o "$work/time" -f "%e %M" "$abupdate" -q --config "$work/abupdate.toml" --disk "$work/d.img" \
    apply --allow-downgrade "${@:4}" "$1/$2.abu" >"$work/out" 2>&1 || { cat "$work/out" >&2; return 1; }
  read -r s m <"$work/time"
  conns=$(($(wc -l <"$work/conn.log") - conns))
  tail -n +$((before + 1)) "$work/nginx/access.log" | awk -v s="$s" -v m="$m" -v c="$conns" \
    '{ b += $2; n++ } END { print s, m, b, n, c }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# casync: each root image into its own store; a client holding the old one fetches the new
# image's chunk files (compressed) that the old store lacks, and the index.
casync_bytes() { # casync_bytes OLD NEW
  mkdir -p "$work/casync"
  for v in "$1" "$2"; do
    [ -f "$work/casync/$v.caibx" ] || casync make --store="$work/casync/$v" "$work/casync/$v.caibx" "$work/rootfs-$v" >/dev/null
  done
  python3 - "$work/casync/$1" "$work/casync/$2" "$work/casync/$2.caibx" <<'EOF'
import os, sys
def chunks(d):
    return {os.path.relpath(os.path.join(r, f), d): os.path.getsize(os.path.join(r, f))
            for r, _, fs in os.walk(d) for f in fs}
old, new = chunks(sys.argv[1]), chunks(sys.argv[2])
print(sum(s for c, s in new.items() if c not in old) + os.path.getsize(sys.argv[3]))
EOF
}
xdelta_bytes() { # xdelta_bytes OLD NEW: the source window covers the whole old image
  local win=$((64 << 20)) sz
  sz=$(stat -c %s "$work/rootfs-$1")
  while ((win < sz)); do win=$((win * 2)); done
  xdelta3 -f -e -B "$win" -s "$work/rootfs-$1" "$work/rootfs-$2" "$work/xd"
  stat -c %s "$work/xd"
}
rauc_bytes() { # rauc_bytes OLD NEW: estimate of RAUC adaptive (block-hash-index, 4 KiB)
  python3 - "$work/rootfs-$1" "$work/rootfs-$2" <<'EOF'
import hashlib, sys
def blocks(p):
    with open(p, "rb") as f:
        while b := f.read(4096):
            yield hashlib.sha256(b).digest()
old = set(blocks(sys.argv[1]))
new = list(blocks(sys.argv[2]))
print(sum(1 for h in new if h not in old) * 4096 + 32 * len(new))
EOF
}

verdict() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? "met" : "missed" }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f%%", 100 * a / b }'; }
rows=()
goals=()
lrows=()
lgoals=()
declare -A goal=([noop]=0.5 [leaf]=2.5 [lib]=15 [libc]=35 [1g-leaf]=2.5)
declare -A label=([noop]="no-op (v1 again)" [leaf]="1. leaf package (xz-utils)" [lib]="2. libssl3 + openssl, dependents renamed"
  [libc]="3. libc6, every store path renamed" [1g-leaf]="1 GiB root, leaf package (xz-utils)")
for p in "${pairs[@]}"; do
  n=${new[$p]} b=${base[$p]}
  log "pair $p: applies"
  bundle=$(stat -c %s "$www/$n.abu")
  ts=() fs=() lts=() lfs=() rss=0 frss=0
  for r in $(seq "$rounds"); do
    out=$(applied "$url" "$n" "$b")
    read -r s m bytes reqs _ <<<"$out"
    ts+=("$s")
    ((m > rss)) && rss=$m
    out=$(applied "$url" "$n" "$b" --full)
    read -r s m fbytes freqs _ <<<"$out"
    fs+=("$s")
    ((m > frss)) && frss=$m
    if [ "$link" = 1 ]; then
      out=$(applied "$link_url" "$n" "$b")
      read -r s _ lbytes lreqs lconns <<<"$out"
      lts+=("$s")
      out=$(applied "$link_url" "$n" "$b" --full)
      read -r s _ lfbytes lfreqs lfconns <<<"$out"
      lfs+=("$s")
    fi
  done
  # What the plan reads (front, then exact ranges): the bytes a file source gives.
  cp --sparse=always "$work/disk-$b.img" "$work/d.img"
  read -r planned <<<"$("$abupdate" -q --config "$work/abupdate.toml" --disk "$work/d.img" apply --dry-run --json \
    --allow-downgrade "$www/$n.abu" | python3 -c 'import json, sys; print(json.load(sys.stdin)["readBytes"])')"
  dt=$(printf '%s\n' "${ts[@]}" | median) ft=$(printf '%s\n' "${fs[@]}" | median)
  log "pair $p: casync, xdelta3, RAUC estimate"
  cb=$(casync_bytes "$b" "$n")
  xb=$(xdelta_bytes "$b" "$n")
  rb=$(rauc_bytes "$b" "$n")
  rows+=("$(printf '| %s | %d | %d (%s) | %d | %d (%s) | %d (%s) | %d (%s) | %d (%s) | %.2f | %.2f | %.1f / %.1f |' \
    "${label[$p]}" "$bundle" "$bytes" "$(pct "$bytes" "$bundle")" "$reqs" "$planned" "$(pct "$planned" "$bundle")" "$cb" "$(pct "$cb" "$bundle")" \
    "$xb" "$(pct "$xb" "$bundle")" "$rb" "$(pct "$rb" "$bundle")" "$dt" "$ft" \
    "$(echo "scale=1; $rss / 1024" | bc)" "$(echo "scale=1; $frss / 1024" | bc)")")
  log "${rows[-1]}"
  share=$(awk -v a="$bytes" -v b="$bundle" 'BEGIN { printf "%.2f", 100 * a / b }')
  goals+=("- ${label[$p]}: ${share}% of the bundle (goal <= ${goal[$p]}%: $(verdict "$share" "${goal[$p]}")); \
$(awk -v a="$bytes" -v c="$cb" 'BEGIN { printf "%.2fx casync'"'"'s bytes", a / c }') ($(verdict "$bytes" "$cb")); \
delta ${dt} s vs full ${ft} s ($(verdict "$dt" "$ft")); peak RSS $(echo "scale=1; $rss / 1024" | bc) MiB ($(verdict "$rss" 16384)); \
full download ${fbytes} bytes in ${freqs} requests")
  if [ "$link" = 1 ]; then
    ldt=$(printf '%s\n' "${lts[@]}" | median) lft=$(printf '%s\n' "${lfs[@]}" | median)
    lrows+=("$(printf '| %s | %d | %d | %d | %.2f | %.2f | %d | %d | %d | %.2f | %.2f |' \
      "${label[$p]}" "$lbytes" "$lreqs" "$lconns" "$dt" "$ldt" "$lfbytes" "$lfreqs" "$lfconns" "$ft" "$lft")")
    log "${lrows[-1]}"
    lgoals+=("- ${label[$p]}: on the link delta ${ldt} s vs full ${lft} s ($(verdict "$ldt" "$lft"))")
    if [ "$p" = libc ]; then
      # Issue 21's goal: the delta's bytes at the link's rate plus the disk's share (the full
      # apply on loopback), with 20% to spare.
      lim=$(awk -v b="$lbytes" -v r="$mbit" -v f="$ft" 'BEGIN { printf "%.2f", (b * 8 / (r * 1e6) + f) * 1.2 }')
      lgoals+=("- ${label[$p]}: goal (${lbytes} bytes / ${mbit} Mbit/s + full apply on loopback ${ft} s) x 1.2 = ${lim} s; \
measured delta on the link ${ldt} s ($(verdict "$ldt" "$lim"))")
    fi
  fi
done

echo "| pair | bundle (bytes) | abupdate delta: bytes on the wire | requests | planned reads (--dry-run) | casync | xdelta3 | RAUC adaptive (estimate) | delta apply (s) | full apply (s) | peak RSS delta / full (MiB) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
printf '%s\n' "${goals[@]}"
echo
if [ "$link" = 1 ]; then
  echo "Through the link: ${rtt_ms} ms round trip, ${mbit} Mbit/s each way (scripts/bench-delta/link.py, on 127.0.0.1)."
  echo
  echo "| pair | delta: bytes on the wire | requests | connections | delta apply, loopback (s) | delta apply, link (s) | full: bytes on the wire | requests | connections | full apply, loopback (s) | full apply, link (s) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${lrows[@]}"
  echo
  printf '%s\n' "${lgoals[@]}"
  echo
fi
for v in v1 leaf lib libc; do
  echo "- $v: $(ls "$work/sys-$v/nix/store" | wc -l) store paths, $(du -sb "$work/sys-$v/nix" | cut -f1) bytes of files, root image $(stat -c %s "$work/rootfs-$v") bytes"
done
[ -f "$work/rootfs-1g-v1" ] && echo "- 1 GiB: root image $(stat -c %s "$work/rootfs-1g-v1") bytes, $(ls "$work/sys-1g-v1/nix/store" | wc -l) store paths"
for d in "$work"/debs/*.deb; do echo "- other build: ${d##*/}"; done
