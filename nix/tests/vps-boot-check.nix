# flake.nix's checks.x86_64-linux.vps-boot and vps-boot-uefi: the example system, its disk
# image made by the Nix-built abbuild (images/vps.toml: GRUB; signed with a key made here and
# thrown away) and a boot of that image in QEMU (TCG, no KVM) up to the system's ready line, all
# in one derivation. It uses only attributes real nixpkgs has (runCommand, closureInfo,
# qemu_test, OVMF.fd; docs/nix.md, "Verifying with real nixpkgs"), so the same check runs
# against nixpkgs and against nix/tests/mock-nixpkgs.
# firmware: null boots with QEMU's SeaBIOS (BIOS, GRUB's i386-pc core.img in the BIOS boot
# partition); a file boots with it as -bios (OVMF.fd: UEFI, GRUB's x86_64-efi from the ESP).
{ pkgs, abbuild, system, image ? ../../images/vps.toml, firmware ? null }:
let
  toplevel = system.toplevel;
  # abbuild asks `nix-store -qR` for the closure of a store path; inside a build there is no
  # store database to ask, so closureInfo (which Nix computes from the references) answers.
  closure = pkgs.closureInfo { rootPaths = [ toplevel ]; };
  qemu = pkgs.qemu_test;
  # The mock nixpkgs has no working static veritysetup (abupdateMock.noVerity): there the image
  # is made without dm-verity. With nixpkgs the image has it and the initrd opens the slot
  # through dm-verity.
  noVerity = (pkgs.abupdateMock or { }).noVerity or false;
  name = system.config.system.name;
  version = system.config.system.version;
in
pkgs.runCommand "${name}-boot-check${if firmware == null then "" else "-uefi"}" { } ''
  set -eu
  work=$PWD
  mkdir -p bin
  printf '#!/bin/sh\nexec cat %s/store-paths\n' ${closure} > bin/nix-store
  chmod +x bin/nix-store
  export PATH="$work/bin:$PATH" HOME="$work"

  # The image's last console= is tty0, which the kernel makes /dev/console, where the boot
  # script and the health check write; the check reads the serial port, so its copy of the
  # image definition names ttyS0 last. Nothing else changes.
  sed 's/^kernel-params = .*/kernel-params = ["console=tty0", "console=ttyS0"]/' ${image} > image.toml
  grep -qx 'kernel-params = \["console=tty0", "console=ttyS0"\]' image.toml
  ${if noVerity then "echo 'verity = false' >> image.toml" else ""}

  ${abbuild}/bin/abbuild keygen --out-dir keys --name throwaway
  ${abbuild}/bin/abbuild build --image image.toml --system ${toplevel} --version 1 \
    --key keys/throwaway.key --out-dir img --processors 1
  disk=$(echo img/*.img)
  [ -f "$disk" ]

  : > console.log
  ${qemu}/bin/qemu-system-x86_64 -accel tcg -m 512 -display none -monitor none -no-reboot \
    ${if firmware == null then "" else "-bios ${firmware}"} \
    -serial file:console.log -drive "file=$disk,if=virtio,format=raw" \
    -nic user,model=virtio-net-pci &
  qemu_pid=$!
  stop() { kill "$qemu_pid" 2>/dev/null || true; }
  fail() {
    echo "vps-boot: FAIL: $*"
    tail -n 60 console.log
    stop
    exit 1
  }

  # The console lines of a good first boot, in order: the boot script on slot a, abupdate's
  # boot check, the DHCP lease from QEMU's user network, and the ready line: the health check
  # (sshd listens) passed and the slot was marked good.
  waited=0
  while IFS= read -r line; do
    until grep -qF "$line" console.log; do
      grep -q "Kernel panic" console.log && fail "kernel panic before: $line"
      kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU stopped before: $line"
      [ "$waited" -lt 900 ] || fail "not seen within 900 s: $line"
      sleep 1
      waited=$((waited + 1))
    done
    echo "vps-boot: seen after $waited s: $line"
  done <<EOF
  boot: ${name} ${version} on slot a
  abupdate boot-check exited with 0
  lease of 10.0.2.15 obtained
  health: healthy; abupdate mark-good exited with 0
  EOF
  stop
  mkdir -p $out
  cp console.log $out/console.log
''
