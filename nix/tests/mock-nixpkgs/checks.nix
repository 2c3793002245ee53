# What flake.nix's checks (nix/tests/vps-boot-check.nix) take from nixpkgs, made like the rest
# of the mock from the build host's Debian packages (scripts/trixie-root.sh installs them):
# qemu_test (qemu-system-x86, with its SeaBIOS), OVMF.fd (ovmf) and closureInfo, in nixpkgs'
# shapes (docs/nix.md, "Verifying with real nixpkgs"): bin/qemu-system-x86_64, FV/OVMF.fd, and
# closureInfo { rootPaths } with store-paths, one path a line.
#
# abupdateMock.noVerity: the check's image is made with verity = false (the mock's veritysetup
# is a stub). abupdateMock.checkModules: what the check adds to the example system because the mock is not
# nixpkgs (with nixpkgs the attribute is absent and the example boots as it is): no static
# e2fsprogs on the host (the initrd formats /data with busybox mke2fs), and a dropbear stand-in
# that only listens on the ssh port, so that the example's own health check
# (`netstat -ltn | grep -q ':22 '`) runs unchanged.
{ drv, system, hostPath, busybox }:
let
  qemu = drv "qemu-host" ''
    mkdir -p $out/bin
    ln -s /usr/bin/qemu-system-x86_64 $out/bin/qemu-system-x86_64
  '' { };

  # Nix writes each root's closure graph (path, deriver, count, references) into the build
  # directory; the paths are the first line of each record.
  closureInfo = { rootPaths }:
    let n = builtins.length rootPaths; in
    builtins.derivation ({
      name = "closure-info";
      inherit system;
      builder = "/bin/sh";
      PATH = hostPath;
      exportReferencesGraph = builtins.concatLists
        (builtins.genList (i: [ "graph${toString i}" (builtins.elemAt rootPaths i) ]) n);
      args = [ "-e" "-c" ''
        mkdir -p $out
        awk 's == 0 { print; s = 1; next }
             s == 1 { s = 2; next }
             s == 2 { n = $1; s = n > 0 ? 3 : 0; next }
             s == 3 { if (--n == 0) s = 0 }' graph* | sort -u > $out/store-paths
        test -s $out/store-paths
      '' ];
    });

  listeningSsh = drv "dropbear-listening-stub" ''
    mkdir -p $out/bin
    sh="#!${busybox}/bin/busybox sh"
    printf '%s\nwhile [ $# -gt 0 ]; do [ "$1" = -p ] && port=$2; shift; done\nmkdir -p /var/empty\nexec ${busybox}/bin/busybox httpd -f -p "$port" -h /var/empty\n' "$sh" > $out/bin/dropbear
    printf '%s\nwhile [ $# -gt 0 ]; do [ "$1" = -f ] && echo stub-key > "$2"; shift; done\n' "$sh" > $out/bin/dropbearkey
    chmod +x $out/bin/*
  '' { };
in
{
  inherit closureInfo;
  # nixpkgs' OVMF has an `fd` output with FV/OVMF.fd (code and variables in one file).
  OVMF.fd = drv "ovmf-host" ''
    mkdir -p $out/FV
    cp /usr/share/ovmf/OVMF.fd $out/FV/OVMF.fd
  '' { };
  qemu_test = qemu;
  # Its veritysetup is a stub (mock-nixpkgs/default.nix): the check's image has no dm-verity.
  abupdateMock.noVerity = true;
  abupdateMock.checkModules = [
    {
      initrd.e2fsprogs = null;
      ssh.package = listeningSsh;
      # Debian's busybox (the mock's) has no ntpd, and the check's QEMU has no time server.
      time.servers = { __replace = [ ]; };
    }
  ];
}
