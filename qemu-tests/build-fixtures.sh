#!/usr/bin/env bash
# Builds what the QEMU scenarios boot and apply, through the real path:
# Nix fixture (nix/fixture, built with Debian's nix-build) -> `abbuild build` -> disk image
# and signed bundle. Output in out/qemu (or $1):
#   qemu-test-{1,2,3}.img/.abu   systems v1..v3 (the .img of v1 is what the scenarios boot)
#   qemu-test-grub-1.img         v1's system on the GRUB disk (images/qemu-test-grub.toml: the
#                                same compatible, so the bundles above install on it too)
#   qemu-test-grub-1-grub212.img the same disk made with GRUB 2.12 (grub-mkimage and modules from
#                                scripts/trixie-root.sh's Debian 13 root), for 15_grub212
#   broken.abu                   v4 whose system init fails at once
#   hung.abu                     v5 whose system init hangs after the switch root (16_watchdog)
#   corrupt.abu                  v2 with one byte flipped in a rootfs chunk v1 does not have
#   wrong-key.abu                v2 signed by a key the devices do not trust
#   channel/                     build-channel-media.sh: systems with a channel, channel media
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/out/qemu}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
cargo build -q --release -p abbuild
cargo build -q --release --target x86_64-unknown-linux-musl -p abupdate
target=${CARGO_TARGET_DIR:-$repo/target}
abbuild=$target/release/abbuild
abupdate_static=$target/x86_64-unknown-linux-musl/release/abupdate

# Test-only keys: made once per output directory.
if [ ! -f "$out/keys/test.key" ]; then
  "$abbuild" -q keygen --out-dir "$out/keys" --name test >/dev/null
  "$abbuild" -q keygen --out-dir "$out/other-keys" --name other >/dev/null
fi

system() { # version broken -> prints the toplevel store path (docs/nix.md: the fixture)
  local flags=()
  [ "$2" = true ] && flags+=(--broken)
  bash scripts/build-fixture.sh --version "$1" "${flags[@]}" --abupdate "$abupdate_static" \
    --pubkey "$out/keys/test.pub" --out-link "$out/system-$1" 2>"$out/nix-build-$1.log" \
    || { cat "$out/nix-build-$1.log"; exit 1; }
}

for v in 1 2 3 4; do
  broken=false
  [ "$v" = 4 ] && broken=true
  toplevel=$(system "$v" "$broken" | tail -n1)
  echo "fixture v$v: $toplevel"
  "$abbuild" -q build --image images/qemu-test.toml --system "$toplevel" --version "$v" \
    --key "$out/keys/test.key" --out-dir "$out"
done
mv "$out/qemu-test-4.abu" "$out/broken.abu"

# v5 whose init hangs without failing: only the hardware watchdog gets the machine out.
bash scripts/build-fixture.sh --version 5 --hung --abupdate "$abupdate_static" \
  --pubkey "$out/keys/test.pub" --out-link "$out/system-5-hung" 2>"$out/nix-build-5.log" \
  || { cat "$out/nix-build-5.log"; exit 1; }
"$abbuild" -q build --image images/qemu-test.toml --system "$(readlink -f "$out/system-5-hung")" \
  --version 5 --key "$out/keys/test.key" --out-dir "$out"
mv "$out/qemu-test-5.abu" "$out/hung.abu"
rm -f "$out/qemu-test-5.img"

# The same v1 system on a GRUB disk (BIOS and UEFI); its bundle is the one above.
mkdir -p "$out/grub"
"$abbuild" -q build --image images/qemu-test-grub.toml --system "$(readlink -f "$out/system-1")" \
  --version 1 --key "$out/keys/test.key" --out-dir "$out/grub"
mv "$out/grub/qemu-test-grub-1.img" "$out/qemu-test-grub-1.img"

# The same disk with GRUB 2.12 (nixpkgs' GRUB is 2.12 or later; Debian 12's is 2.06): trixie's
# grub-mkimage, run on this host through the trixie root's own dynamic loader (it needs
# trixie's glibc), with trixie's modules and boot.img (abbuild's ABBUILD_GRUB_MKIMAGE and
# ABBUILD_GRUB_LIB, docs/images.md).
trixie=$(bash scripts/trixie-root.sh)
lib=$trixie/usr/lib/x86_64-linux-gnu
printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' \
  "$lib/ld-linux-x86-64.so.2" "$lib" "$trixie/usr/bin/grub-mkimage" >"$out/grub/grub-mkimage"
chmod +x "$out/grub/grub-mkimage"
case $("$out/grub/grub-mkimage" --version) in
  *" 2.12"*) ;;
  *) echo "trixie's grub-mkimage is not GRUB 2.12" >&2; exit 1 ;;
esac
ABBUILD_GRUB_MKIMAGE="$out/grub/grub-mkimage" ABBUILD_GRUB_LIB="$trixie/usr/lib/grub" \
  "$abbuild" -q build --image images/qemu-test-grub.toml \
  --system "$(readlink -f "$out/system-1")" --version 1 --key "$out/keys/test.key" \
  --out-dir "$out/grub"
mv "$out/grub/qemu-test-grub-1.img" "$out/qemu-test-grub-1-grub212.img"
rm -rf "$out/grub"
rm -f "$out/qemu-test-4.img"

# v2 signed by an untrusted key.
mkdir -p "$out/wrong"
"$abbuild" -q build --image images/qemu-test.toml --system "$(readlink -f "$out/system-2")" \
  --version 2 --key "$out/other-keys/other.key" --out-dir "$out/wrong"
mv "$out/wrong/qemu-test-2.abu" "$out/wrong-key.abu"
rm -rf "$out/wrong"

# v2 with one flipped byte in the middle of a rootfs chunk that v1 does not have: a delta
# from a v1 machine must read that chunk from the bundle, so the apply is refused there (exit 18).
# (A flipped byte in a chunk the device copies from its own slot is never read: the slot still
# gets exactly the signed content.)
python3 - "$out/qemu-test-1.abu" "$out/qemu-test-2.abu" "$out/corrupt.abu" <<'PY'
import json, shutil, struct, sys

def read(path):
    """(manifest, rootfs chunk list [(offset in payload, length, digest)]) of a format 2 bundle."""
    with open(path, "rb") as f:
        header = f.read(64)
        assert struct.unpack_from("<I", header, 8)[0] == 2, f"{path}: not a format 2 bundle"
        manifest = json.loads(f.read(struct.unpack_from("<I", header, 16)[0]))
        ci = manifest["chunk_index"]
        f.seek(ci["offset"])
        index = f.read(ci["size"])
    chunks, at = [], 0
    for i in range(ci["chunks"][0]):
        length = struct.unpack_from("<I", index, 36 * i)[0]
        chunks.append((at, length, index[36 * i + 4: 36 * i + 36]))
        at += length
    return manifest, chunks

_, old = read(sys.argv[1])
manifest, new = read(sys.argv[2])
have = {digest for _, _, digest in old}
fresh = [(at, length) for at, length, digest in new if digest not in have]
assert fresh, "v2's root has no chunk that v1 lacks"
at, length = fresh[len(fresh) // 2]
shutil.copy(sys.argv[2], sys.argv[3])
with open(sys.argv[3], "r+b") as f:
    pos = manifest["payloads"][0]["offset"] + at + length // 2
    f.seek(pos)
    b = f.read(1)
    f.seek(pos)
    f.write(bytes([b[0] ^ 0xFF]))
PY
ls -la "$out"/*.abu "$out"/*.img

# 14_unattended: channel-configured systems and the channel media (air-gapped updates).
bash qemu-tests/build-channel-media.sh "$out" "$abbuild" "$abupdate_static"
