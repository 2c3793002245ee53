#!/usr/bin/env bash
# The air-gapped channel case for 14_unattended (called by build-fixtures.sh, after the keys and
# broken.abu exist): fixture systems v1 and v2 built with a channel on a medium, checked every
# 15 s, rebooting in a daily window; the published tree (`abbuild publish`); and one small ext4
# image per publication, as a user would copy the tree onto an SSD. Output in OUT/channel:
#   qemu-test-1.img                 v1 with the channel settings (what the scenario boots)
#   qemu-test-{1,2}.abu             their bundles
#   medium-1.img                    channel sequence 1: v1 (the machine is up to date)
#   medium-2.img                    sequence 2: v2 (installed; replaying medium-1 is refused)
#   medium-expired.img              sequence 3: v2, valid for 1 s (expired when the test runs)
#   medium-4.img                    sequence 4: broken.abu's v4 (falls back; then skipped)
# usage: build-channel-media.sh OUT ABBUILD ABUPDATE_STATIC
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(cd "$1" && pwd)
abbuild=$2
abupdate_static=$3
dir=$out/channel
cd "$repo"

# What the device is configured with (docs/nix.md: abupdate.channel, channelMedium, ...). The
# window is fixed; the scenario sets the guest's clock outside or inside it.
label=abupdates
mnt=/run/media/abupdates
settings=(--channel "$mnt/qemu-test/stable.json" --channel-medium "LABEL=$label:$mnt"
  --update-interval 15 --update-jitter 3 --update-reboot 03:00-04:00)

rm -rf "$dir"
mkdir -p "$dir"
for v in 1 2; do
  bash scripts/build-fixture.sh --version "$v" "${settings[@]}" --abupdate "$abupdate_static" \
    --pubkey "$out/keys/test.pub" --out-link "$dir/system-$v" 2>"$dir/nix-build-$v.log" \
    >/dev/null || { cat "$dir/nix-build-$v.log"; exit 1; }
  "$abbuild" -q build --image images/qemu-test.toml --system "$(readlink -f "$dir/system-$v")" \
    --version "$v" --key "$out/keys/test.key" --out-dir "$dir"
done
rm -f "$dir/qemu-test-2.img"

# One publication; the medium gets what a device needs of the tree: the channel file and the
# bundle it names.
publish() { # medium-name bundle [publish options]
  local name=$1 bundle=$2
  shift 2
  "$abbuild" -q publish --bundle "$bundle" --channel stable --key "$out/keys/test.key" \
    --out-dir "$dir/tree" "$@" >/dev/null
  local stage=$dir/stage-$name
  mkdir -p "$stage/qemu-test"
  cp "$dir/tree/qemu-test/stable.json" "$stage/qemu-test/"
  cp "$dir/tree/qemu-test/$(basename "$bundle")" "$stage/qemu-test/"
  local kib=$(($(du -sk "$stage" | cut -f1) + 4096))
  mkfs.ext4 -q -F -O ^has_journal -L "$label" -d "$stage" "$dir/medium-$name.img" "${kib}k" >/dev/null
  rm -rf "$stage"
}
publish 1 "$dir/qemu-test-1.abu"
publish 2 "$dir/qemu-test-2.abu"
publish expired "$dir/qemu-test-2.abu" --valid-for 1
publish 4 "$out/broken.abu"
rm -rf "$dir/tree"
ls -la "$dir"/*.img "$dir"/*.abu
