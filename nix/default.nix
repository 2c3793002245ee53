# Production entry point (used by flake.nix, usable without flakes):
#
#   nix-build nix -A abupdate                      # static musl abupdate
#   nix-build nix -A abbuild                       # the image builder (glibc, for CI)
#   nix-build nix -A examples.vps.toplevel         # the example system for images/vps{,-uefi}.toml
#   nix-build nix -A examples.webserver.toplevel   # the same with a web server (128 MiB)
#   (import ./nix { }).mkSystem { modules = [ ./my-system.nix ]; }
#
# pkgs: a nixpkgs package set for the build machine (x86_64-linux); the systems' user space comes
# from its pkgsMusl. See docs/nix.md.
{ pkgs ? import <nixpkgs> { } }:
let
  version = "0.1.0";

  # The Rust workspace only: edits elsewhere (docs, nix, tests) do not rebuild the binaries.
  src = builtins.path {
    name = "abupdate-src";
    path = ../.;
    filter = path: type:
      let
        rel = builtins.substring (builtins.stringLength (toString ../.) + 1) (-1) (toString path);
        top = builtins.head (builtins.split "/" rel);
        base = baseNameOf path;
      in
      builtins.elem top [ "Cargo.toml" "Cargo.lock" "bundle" "builder" "updater" "docgen" ]
      && base != "target" && builtins.match "result.*" base == null;
  };

  # Man pages and shell completions, generated from the tool's clap definitions by abdocgen
  # (docgen/, built next to the tool), which is then removed: it is not part of the package.
  installDocs = tool: ''
    $out/bin/abdocgen ${tool} docgen-out >/dev/null
    rm $out/bin/abdocgen
    installManPage docgen-out/man1/*.1
    installShellCompletion --cmd ${tool} \
      --bash docgen-out/completions/${tool}.bash \
      --zsh docgen-out/completions/_${tool} \
      --fish docgen-out/completions/${tool}.fish
  '';

  # Statically linked, so the same binary runs in any root (and in an initrd if ever needed).
  # pkgsStatic, not pkgsMusl with +crt-static: nixpkgs builds pkgsMusl's std and configures its
  # cargo for dynamic musl (crt-static = isStatic, false there), while pkgsStatic is the set
  # meant for static binaries, and it reuses the build machine's rustc (only std is built for
  # it) where pkgsMusl needs a rustc and LLVM built for musl. docs/nix.md says what was read.
  abupdate = pkgs.pkgsStatic.rustPlatform.buildRustPackage {
    pname = "abupdate";
    inherit version src;
    cargoLock.lockFile = ../Cargo.lock;
    cargoBuildFlags = [ "-p" "abupdate" "-p" "abdocgen" ];
    cargoTestFlags = [ "-p" "abupdate" ];
    # The integration tests build disk images with abbuild and external tools; CI runs them.
    doCheck = false;
    nativeBuildInputs = [ pkgs.installShellFiles ];
    postInstall = installDocs "abupdate";
    meta.mainProgram = "abupdate";
  };

  # systemd-boot's EFI binary from nixpkgs' systemd (built with its boot loader on x86_64 glibc),
  # copied alone so that abbuild's closure holds this one file rather than all of systemd.
  systemdBootEfi = pkgs.runCommand "systemd-bootx64.efi" { } ''
    cp ${pkgs.systemd}/lib/systemd/boot/efi/systemd-bootx64.efi $out
  '';

  # GRUB's module directories for boot-backend = "grub", side by side as abbuild reads them from
  # ABBUILD_GRUB_LIB (builder/src/grub.rs): nixpkgs builds one GRUB platform per package, each
  # into lib/grub/<grubTarget>: grub2 is i386-pc (BIOS: core.img, boot.img), grub2_efi is
  # x86_64-efi. Checked here, so a changed layout fails this build rather than an image build.
  grubLib = pkgs.runCommand "abbuild-grub-lib" { } ''
    mkdir $out
    ln -s ${pkgs.grub2}/lib/grub/i386-pc $out/i386-pc
    ln -s ${pkgs.grub2_efi}/lib/grub/x86_64-efi $out/x86_64-efi
    for f in i386-pc/moddep.lst i386-pc/boot.img x86_64-efi/moddep.lst; do
      test -f $out/$f || { echo "GRUB has no $f"; exit 1; }
    done
  '';

  # The builder runs in CI, not on devices: built for the build machine, with the programs it calls
  # (grub-mkimage: the same program makes images for both GRUB platforms) and the boot loaders it
  # installs (ABBUILD_SYSTEMD_BOOT_EFI: the default for image definitions without `bootloader`;
  # ABBUILD_GRUB_LIB: GRUB's modules; docs/nix.md), so that it needs nothing from the host but Nix.
  abbuild = pkgs.rustPlatform.buildRustPackage {
    pname = "abbuild";
    inherit version src;
    cargoLock.lockFile = ../Cargo.lock;
    cargoBuildFlags = [ "-p" "abbuild" "-p" "abdocgen" ];
    cargoTestFlags = [ "-p" "abbuild" ];
    doCheck = false;
    nativeBuildInputs = [ pkgs.makeWrapper pkgs.installShellFiles ];
    postInstall = installDocs "abbuild" + ''
      wrapProgram $out/bin/abbuild \
        --prefix PATH : ${pkgs.squashfsTools}/bin:${pkgs.qemu-utils or pkgs.qemu}/bin:${pkgs.grub2}/bin \
        --set-default ABBUILD_SYSTEMD_BOOT_EFI ${systemdBootEfi} \
        --set-default ABBUILD_GRUB_LIB ${grubLib}
    '';
    meta.mainProgram = "abbuild";
  };

  mkSystem = import ./system { inherit pkgs abupdate; };
in
{
  inherit abupdate abbuild mkSystem src systemdBootEfi grubLib;
  examples.vps = mkSystem { modules = [ ./examples/vps.nix ]; };
  examples.webserver = mkSystem { modules = [ ./examples/vps.nix ./examples/webserver.nix ]; };
}
