# A stand-in for nixpkgs with only the attributes nix/default.nix and nix/system use, made from
# files of the build host (Debian: busybox-static, linux-image-amd64) and a static abupdate.
# It lets Debian's Nix 2.8 evaluate AND build mkSystem's toplevel without nixpkgs, so that the
# production boot scripts can be booted in QEMU (see docs/nix.md, "Evaluating
# mkSystem"). It is not nixpkgs: packages that are not needed for a boot are empty stubs, the
# kernel's modules are a symlink into the host's /lib/modules, and everything builds with
# sandbox = false only.
# Arguments: abupdate (a static abupdate binary, absolute path string; default
# $ABUPDATE_STATIC), kernelVersion; anything else (`system` when imported as nixpkgs) is ignored.
args@{ kernelVersion ? null, ... }:
let
  envAbupdate = builtins.getEnv "ABUPDATE_STATIC";
  abupdate =
    if (args.abupdate or null) != null then args.abupdate
    else if envAbupdate != "" then envAbupdate
    else null;
  system = "x86_64-linux";
  hostPath = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  drv = name: script: env: builtins.derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-e" "-c" script ];
    PATH = hostPath;
  } // env);
  stub = name: drv name "mkdir -p $out/bin" { };

  versions = builtins.filter (v: builtins.pathExists (/boot + "/vmlinuz-${v}"))
    (builtins.attrNames (builtins.readDir /lib/modules));
  kver = if kernelVersion != null then kernelVersion
    else builtins.head (builtins.sort (a: b: builtins.compareVersions a b > 0) versions);

  busybox = drv "busybox-host" ''
    mkdir -p $out/bin
    cp /usr/bin/busybox $out/bin/busybox
  '' { };

  kernel = drv "linux-host-${kver}" ''
    mkdir -p $out/lib/modules
    cp /boot/vmlinuz-${kver} $out/bzImage
    ln -s /lib/modules/${kver} $out/lib/modules/${kver}
  '' { } // { modDirVersion = kver; version = kver; };

  # dropbear stand-in: stays up like a daemon and makes a host key file.
  # (The device's root has no /bin/sh: the scripts name the mock busybox as interpreter.)
  dropbear = drv "dropbear-stub" ''
    mkdir -p $out/bin
    sh="#!${busybox}/bin/busybox sh"
    printf '%s\necho "dropbear stub: $*"\nexec sleep 2147483647\n' "$sh" > $out/bin/dropbear
    printf '%s\nwhile [ $# -gt 0 ]; do [ "$1" = -f ] && echo stub-key > "$2"; shift; done\n' "$sh" > $out/bin/dropbearkey
    chmod +x $out/bin/*
  '' { };

  rustPlatform.buildRustPackage = args:
    if args.pname == "abupdate" && abupdate != null then
      drv "abupdate-prebuilt" "mkdir -p $out/bin; cp ${builtins.path { name = "abupdate-static"; path = /. + abupdate; }} $out/bin/abupdate" { }
    else stub "${args.pname}-stub";

  self = {
    inherit system kernel rustPlatform;
    pkgsMusl = self;
    pkgsStatic = self;
    stdenv.hostPlatform.linux-kernel.target = "bzImage";
    linuxPackages = { inherit kernel; };
    busybox = busybox // { override = _: busybox; };
    dropbear = dropbear;
    e2fsprogs = stub "e2fsprogs-stub";
    curl = stub "curl-stub";
    zstd = stub "zstd-stub";
    makeWrapper = stub "makeWrapper-stub";
    squashfsTools = stub "squashfs-tools-stub";
    qemu-utils = stub "qemu-utils-stub";

    runCommand = name: env: script: drv name script (builtins.removeAttrs env [ "nativeBuildInputs" ]);
    writeText = name: text: drv name ''printf '%s' "$text" > $out'' { inherit text; };
    writeScript = name: text: drv name ''printf '%s' "$text" > $out; chmod +x $out'' { inherit text; };
    buildEnv = { name, paths, pathsToLink ? [ "/" ] }: drv name ''
      mkdir -p $out/bin $out/sbin
      for p in $paths; do
        for d in bin sbin; do
          [ -d $p/$d ] || continue
          for f in $p/$d/*; do [ -e "$f" ] && ln -sf "$f" $out/$d/; done
        done
      done
    '' { inherit paths; };
  };
in
self
