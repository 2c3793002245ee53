# A stand-in for nixpkgs with only the attributes nix/default.nix and nix/system use, made from
# files of the build host (Debian: busybox-static, linux-image-amd64) and a static abupdate.
# It lets Debian's Nix 2.8 evaluate AND build mkSystem's toplevel without nixpkgs, so that the
# production boot scripts can be booted in QEMU (see docs/nix.md, "Evaluating
# mkSystem"). It is not nixpkgs: packages that are not needed for a boot are empty stubs, the
# kernel's modules are a symlink into the host's /lib/modules, and everything builds with
# sandbox = false only. Where nix/ depends on a package's shape (outputs, passthru attributes,
# .override's argument names, configure flags), the stand-in has nixpkgs' shape as read in
# nixpkgs' files: docs/nix.md, "nixpkgs touch points".
# Arguments: abupdate (a static abupdate binary, absolute path string; default
# $ABUPDATE_STATIC), abbuild (an abbuild binary, default $ABBUILD_BIN; without one abbuild is a
# stub), abdocgen (the man page and completion generator the packages run in postInstall;
# default $ABDOCGEN_BIN; without one, a stand-in writes placeholder files), systemdBootEfi (the file the mock systemd provides as systemd-boot's EFI binary; default
# Debian's, from systemd-boot-efi), grubLib (the directory the mock grub2 and grub2_efi take
# GRUB's i386-pc and x86_64-efi modules from; default Debian's /usr/lib/grub, from grub-pc-bin
# and grub-efi-amd64-bin), kernelVersion; anything else (`system` when imported as nixpkgs) is
# ignored.
args@{ kernelVersion ? null, grubLib ? null, ... }:
let
  argOrEnv = name: env:
    let e = builtins.getEnv env; in
    if (args.${name} or null) != null then args.${name}
    else if e != "" then e
    else null;
  abupdate = argOrEnv "abupdate" "ABUPDATE_STATIC";
  abbuild = argOrEnv "abbuild" "ABBUILD_BIN";
  abdocgen = argOrEnv "abdocgen" "ABDOCGEN_BIN";
  systemdBootEfi =
    if (args.systemdBootEfi or null) != null then args.systemdBootEfi
    else "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
  system = "x86_64-linux";
  hostPath = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  drv = name: script: env: builtins.derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-e" "-c" script ];
    PATH = hostPath;
  } // env);
  stub = name: drv name "mkdir -p $out/bin" { };
  # A stub with a nixpkgs package's outputs, the first being bin (so "${p}" is bin, with bin/).
  stubOutputs = name: outputs: drv name ''
    for o in $outputs; do eval "mkdir -p \"\$$o\""; done
    mkdir -p $bin/bin
  '' { inherit outputs; };

  # A package made by callPackage, as far as .override goes: it takes the argument names of the
  # package's function in nixpkgs (formals, read from its file; docs/nix.md's touch-point table)
  # and nothing else, as nixpkgs fails with "function ... called with unexpected argument";
  # overrides accumulate. make: the given arguments -> the derivation.
  overridable = name: formals: make: args:
    let unknown = builtins.filter (n: !(builtins.elem n formals)) (builtins.attrNames args);
    in
    if unknown != [ ] then
      throw "mock nixpkgs: ${name}.override: function called with unexpected argument '${builtins.head unknown}'"
    else make args // { override = more: overridable name formals make (args // more); };

  versions = builtins.filter (v: builtins.pathExists (/boot + "/vmlinuz-${v}"))
    (builtins.attrNames (builtins.readDir /lib/modules));
  kver = if kernelVersion != null then kernelVersion
    else builtins.head (builtins.sort (a: b: builtins.compareVersions a b > 0) versions);

  busybox = drv "busybox-host" ''
    mkdir -p $out/bin
    cp /usr/bin/busybox $out/bin/busybox
  '' { };

  # Shaped as nixpkgs' kernel/build.nix builds one (since PR #423933, 2025): outputs out (the
  # image, named by passthru.target), dev and modules (lib/modules/<modDirVersion>; out has no
  # lib/modules); passthru version (the release, not the directory name), modDirVersion, target.
  kernel = drv "linux-host-${kver}" ''
    mkdir -p $out $dev $modules/lib/modules
    cp /boot/vmlinuz-${kver} $out/bzImage
    ln -s /lib/modules/${kver} $modules/lib/modules/${kver}
  '' { outputs = [ "out" "dev" "modules" ]; } // {
    modDirVersion = kver;
    version = builtins.head (builtins.match "([0-9]+\\.[0-9]+(\\.[0-9]+)?).*" kver);
    target = "bzImage";
  };

  # dropbear stand-in: stays up like a daemon and makes a host key file.
  # (The device's root has no /bin/sh: the scripts name the mock busybox as interpreter.)
  # It takes nixpkgs' override arguments (enableSCP, sftpPath): with enableSCP it has a bin/scp
  # stub, and it records sftpPath in nix-support/sftp-path, for tests of what mkSystem asks for.
  dropbearWith = { enableSCP ? false, sftpPath ? "/run/current-system/sw/libexec/sftp-server", ... }:
    drv "dropbear-stub" ''
      mkdir -p $out/bin $out/nix-support
      sh="#!${busybox}/bin/busybox sh"
      printf '%s\necho "dropbear stub: $*"\nexec sleep 2147483647\n' "$sh" > $out/bin/dropbear
      printf '%s\nwhile [ $# -gt 0 ]; do [ "$1" = -f ] && echo stub-key > "$2"; shift; done\n' "$sh" > $out/bin/dropbearkey
      if [ -n "$enableSCP" ]; then printf '%s\necho "scp stub: $*"\n' "$sh" > $out/bin/scp; fi
      chmod +x $out/bin/*
      echo "$sftpPath" > $out/nix-support/sftp-path
    '' { inherit enableSCP sftpPath; };
  # pkgs/by-name/dr/dropbear/package.nix's arguments.
  dropbear = overridable "dropbear" [ "lib" "stdenv" "fetchurl" "zlib" "libxcrypt" "enableSCP" "sftpPath" ]
    dropbearWith { };

  # openssh stand-in: only its sftp-server, which says what it is. openssh's default.nix calls
  # common.nix through callPackage, so .override reaches common.nix's arguments; the options it
  # is built with show in configureFlags as common.nix writes them (--with-pam/--without-pam,
  # --with-ldns).
  opensshWith = { withPAM ? true, withLdns ? true, withKerberos ? false, ... }:
    drv "openssh-stub" ''
      mkdir -p $out/libexec
      printf '#!${busybox}/bin/busybox sh\necho "sftp-server stub"\n' > $out/libexec/sftp-server
      chmod +x $out/libexec/sftp-server
    '' {
      configureFlags = [ (if withPAM then "--with-pam" else "--without-pam") ]
        ++ (if withKerberos then [ "--with-kerberos5" ] else [ ])
        ++ (if withLdns then [ "--with-ldns" ] else [ ]);
    };
  openssh = overridable "openssh"
    [
      "lib" "stdenv" "pkgs" "fetchurl" "fetchpatch" "autoreconfHook" "zlib" "openssl" "libedit"
      "ldns" "pkg-config" "pam" "libredirect" "etcDir" "withKerberos" "withLdns" "krb5" "libfido2"
      "libxcrypt" "hostname" "nixosTests" "withSecurityKey" "withFIDO" "withPAM"
      "dsaKeysSupport" "linkOpenssl" "isNixos"
    ]
    opensshWith { };

  # e2fsprogs stand-in with pkgs/by-name/e2/e2fsprogs/package.nix's shape: outputs bin (first,
  # so "${e2fsprogs}" is bin), dev, out, man, info and fuse2fs with withFuse (on by default on
  # Linux); --with-libarchive=direct with withLibarchive (on by default). Its programs are stubs.
  e2fsprogsWith = isStatic: { withFuse ? true, withLibarchive ? true, shared ? !isStatic, ... }:
    drv "e2fsprogs-stub" ''
      mkdir -p $bin/bin $dev $out $man $info
      for p in mkfs.ext4 e2fsck resize2fs; do
        printf '#!/bin/sh\necho "e2fsprogs stub: $0"\nexit 1\n' > $bin/bin/$p
        chmod +x $bin/bin/$p
      done
      if [ -n "$withFuse" ]; then mkdir -p $fuse2fs/bin; fi
    '' {
      outputs = [ "bin" "dev" "out" "man" "info" ] ++ (if withFuse then [ "fuse2fs" ] else [ ]);
      inherit withFuse;
      configureFlags = [ (if shared then "--enable-elf-shlibs" else "--disable-elf-shlibs") ]
        ++ (if withLibarchive then [ "--with-libarchive=direct" ] else [ ]);
    };
  e2fsprogsFor = isStatic: overridable "e2fsprogs"
    [
      "lib" "stdenv" "buildPackages" "fetchurl" "fetchpatch" "pkg-config" "libuuid" "gettext"
      "texinfo" "withFuse" "fuse3" "shared" "e2fsprogs" "runCommand" "withLibarchive" "libarchive"
    ]
    (e2fsprogsWith isStatic) { };

  # cryptsetup stand-in with pkgs/by-name/cr/cryptsetup/package.nix's shape: outputs bin (first,
  # so "${cryptsetup}" is bin), out, dev, man; programs (upstream's --enable-/--disable- flags)
  # as configureFlags; with a static host --disable-external-tokens. Its veritysetup is a stub
  # that fails (the host's is dynamically linked): a slot booted with abinit.verity= does not
  # come up on a mock-built initrd, so the mock's boots use images without verity.
  cryptsetupWith = isStatic: { programs ? { }, ... }:
    drv "cryptsetup-stub" ''
      mkdir -p $bin/bin $out $dev $man
      printf '#!/bin/sh\necho "cryptsetup stub: $0 cannot open anything"\nexit 1\n' > $bin/bin/veritysetup
      chmod +x $bin/bin/veritysetup
    '' {
      outputs = [ "bin" "out" "dev" "man" ];
      configureFlags = [ "--with-crypto_backend=openssl" ]
        ++ (if isStatic then [ "--disable-external-tokens" ] else [ ])
        ++ map (n: (if programs.${n} then "--enable-" else "--disable-") + n) (builtins.attrNames programs);
    };
  cryptsetupFor = isStatic: overridable "cryptsetup"
    [
      "lib" "stdenv" "fetchurl" "lvm2" "json_c" "asciidoctor" "openssl" "libuuid" "pkg-config"
      "popt" "nixosTests" "libargon2" "withInternalArgon2" "programs" "rebuildMan"
    ]
    (cryptsetupWith isStatic) { };

  # systemd stand-in: only what nix/default.nix takes from it, systemd-boot's EFI binary.
  systemd = drv "systemd-boot-host" ''
    mkdir -p $out/lib/systemd/boot/efi
    cp ${builtins.path { name = "systemd-bootx64.efi"; path = /. + systemdBootEfi; }} $out/lib/systemd/boot/efi/systemd-bootx64.efi
  '' { };

  # grub2 / grub2_efi stand-ins: one GRUB platform each, laid out as nixpkgs' (bin/grub-mkimage,
  # lib/grub/<grubTarget>), copied from the host's GRUB (Debian's grub-common and -bin packages).
  grubDir = if grubLib != null then grubLib else "/usr/lib/grub";
  grubFor = platform: drv "grub-host-${platform}" ''
    mkdir -p $out/bin $out/lib/grub
    cp /usr/bin/grub-mkimage $out/bin/grub-mkimage
    cp -r ${grubDir}/${platform} $out/lib/grub/${platform}
  '' { } // { grubTarget = platform; };

  # makeWrapper's wrapProgram, for the options nix/default.nix uses (--prefix, --set-default).
  # nixpkgs' installShellFiles hook: man pages and completions into $out/share.
  installShellFiles = ''
    installManPage() {
      for f in "$@"; do
        mkdir -p $out/share/man/man1 && cp "$f" $out/share/man/man1/
      done
    }
    installShellCompletion() {
      shift 2
      while [ $# -gt 0 ]; do
        case "$1" in
          --bash) d=share/bash-completion/completions ;;
          --zsh) d=share/zsh/site-functions ;;
          --fish) d=share/fish/vendor_completions.d ;;
        esac
        mkdir -p $out/$d && cp "$2" $out/$d/
        shift 2
      done
    }
  '';
  # The real abdocgen when given; else a stand-in that writes the files it would (placeholders).
  docgen =
    if abdocgen != null then
      "cp ${builtins.path { name = "abdocgen-bin"; path = /. + abdocgen; }} $out/bin/abdocgen"
    else ''
      cat > $out/bin/abdocgen <<'EOF'
      #!/bin/sh
      mkdir -p "$2/man1" "$2/completions"
      echo '.TH STAND-IN 1' > "$2/man1/$1.1"
      for f in "$1.bash" "_$1" "$1.fish"; do echo "# stand-in" > "$2/completions/$f"; done
      EOF
      chmod +x $out/bin/abdocgen
    '';
  wrapProgram = ''
    wrapProgram() {
      prog=$1; shift
      wrapped=$(dirname "$prog")/.$(basename "$prog")-wrapped
      mv "$prog" "$wrapped"
      {
        echo '#!/bin/sh'
        while [ $# -gt 0 ]; do
          case "$1" in
            # \044 is "$": a "$" before "{" would be Nix interpolation here.
            --prefix) printf "%s='%s'\044{%s:+'%s'\044%s}; export %s\n" "$2" "$4" "$2" "$3" "$2" "$2"; shift 4 ;;
            --set-default) printf ': "\044{%s=%s}"; export %s\n' "$2" "$3" "$2"; shift 3 ;;
            *) echo "mock wrapProgram: unsupported $1" >&2; exit 1 ;;
          esac
        done
        printf 'exec %s "$@"\n' "$wrapped"
      } > "$prog"
      chmod +x "$prog"
    }
  '';

  # A prebuilt binary in place of a cargo build; the expression's postInstall runs as it would.
  prebuilt = a: bin: env: drv "${a.pname}-prebuilt" ''
    ${wrapProgram}
    ${installShellFiles}
    mkdir -p $out/bin
    cp ${builtins.path { name = "${a.pname}-bin"; path = /. + bin; }} $out/bin/${a.pname}
    ${docgen}
    ${a.postInstall or ""}
  '' env;
  # rustPlatform of a package set; the derivation records whether that set's host is static
  # (pkgsStatic: isStatic, so nixpkgs' cargo hook and std are +crt-static; pkgsMusl: not) and the
  # RUSTFLAGS it was given, for tests of which set builds what.
  rustPlatformFor = isStatic: {
    buildRustPackage = a:
      let env = { hostIsStatic = isStatic; RUSTFLAGS = a.RUSTFLAGS or ""; }; in
      if a.pname == "abupdate" && abupdate != null then prebuilt a abupdate env
      else if a.pname == "abbuild" && abbuild != null then prebuilt a abbuild env
      # Without a binary: a stub program that fails (the initrd copies abupdate's bin/abupdate).
      else drv "${a.pname}-stub" ''
        mkdir -p $out/bin
        printf '#!/bin/sh\necho "${a.pname} stub"\nexit 1\n' > $out/bin/${a.pname}
        chmod +x $out/bin/${a.pname}
      '' env;
  };
  rustPlatform = rustPlatformFor false;

  self = {
    inherit system kernel rustPlatform systemd;
    grub2 = grubFor "i386-pc";
    grub2_efi = grubFor "x86_64-efi";
    pkgsMusl = self;
    # nixpkgs' pkgsStatic is a cross set with isStatic (top-level/stage.nix): its own rustPlatform
    # and packages built static.
    pkgsStatic = self // {
      rustPlatform = rustPlatformFor true;
      e2fsprogs = e2fsprogsFor true;
      cryptsetup = cryptsetupFor true;
      stdenv.hostPlatform = { isStatic = true; };
    };
    # As on nixpkgs master since 2026: no linux-kernel (nix/system/build.nix falls back to bzImage).
    stdenv.hostPlatform = { };
    linuxPackages = { inherit kernel; };
    # pkgs/os-specific/linux/busybox/default.nix's arguments; the mock's busybox is the host's
    # static one whatever they say.
    busybox = overridable "busybox"
      [
        "stdenv" "lib" "buildPackages" "fetchurl" "fetchpatch" "fetchFromGitLab" "enableStatic"
        "enableMinimal" "enableAppletSymlinks" "useMusl" "musl" "extraConfig" "hostname"
        "coreutils" "zip" "which" "simple-http-server"
      ]
      (_: busybox) { };
    inherit dropbear openssh;
    e2fsprogs = e2fsprogsFor false;
    cryptsetup = cryptsetupFor false;
    curl = stubOutputs "curl-stub" [ "bin" "dev" "out" "man" "devdoc" ];
    zstd = stubOutputs "zstd-stub" [ "bin" "dev" "man" "out" ];
    makeWrapper = stub "makeWrapper-stub";
    installShellFiles = stub "installShellFiles-stub";
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
# What flake.nix's checks need (qemu_test, OVMF, closureInfo): ./checks.nix.
self // import ./checks.nix { inherit drv system hostPath busybox; }
