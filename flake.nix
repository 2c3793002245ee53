{
  description = "abupdate: A/B image builder (abbuild) and updater (abupdate) for minimal musl Linux systems";

  # A release branch, not unstable; `nix flake lock` pins it in flake.lock (commit that file).
  # nixos-26.05 needs Nix >= 2.18; docs/nix.md says what was checked and how to move the pin.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; };
      ab = import ./nix { inherit pkgs; };
    in
    {
      packages.${system} = {
        inherit (ab) abupdate abbuild;
        default = ab.abbuild;
        # The example system for images/vps.toml and images/vps-uefi.toml: its toplevel store path.
        vps = ab.examples.vps.toplevel;
      };

      lib = {
        # mkSystem { modules = [ ... ]; config = { ... }; } -> { toplevel, initrd, etc, sw, kernel, config }
        # (x86_64-linux; pass pkgs to mkSystemWith for another nixpkgs instance).
        mkSystem = ab.mkSystem;
        mkSystemWith = pkgs: (import ./nix { inherit pkgs; }).mkSystem;
      };

      # `nix flake check`: builds the example system and its image (images/vps.toml) with the
      # Nix-built abbuild and boots it in QEMU (TCG) to its ready line (docs/nix.md, "Verifying
      # with real nixpkgs"). abupdateMock exists only in nix/tests/mock-nixpkgs: the adjustments
      # its stand-ins need; with nixpkgs the example system boots as it is.
      # vps-boot boots under SeaBIOS, vps-boot-uefi under OVMF (images/vps.toml is both).
      checks.${system} =
        let
          boot = firmware: import ./nix/tests/vps-boot-check.nix {
            inherit pkgs firmware;
            inherit (ab) abbuild;
            system = ab.mkSystem {
              modules = [ ./nix/examples/vps.nix ] ++ (pkgs.abupdateMock.checkModules or [ ]);
            };
          };
        in
        {
          vps-boot = boot null;
          vps-boot-uefi = boot "${pkgs.OVMF.fd}/FV/OVMF.fd";
        };

      # The nixpkgs-free test fixture (nix/fixture) needs host files and impure evaluation:
      # build it with scripts/build-fixture.sh, not through the flake.
    };
}
