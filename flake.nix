{
  description = "abupdate: A/B image builder (abbuild) and updater (abupdate) for minimal musl Linux systems";

  # Any recent nixpkgs with pkgsMusl; docs/nix.md records what this was checked against.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

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
        # The example system for images/vps.toml: its toplevel store path.
        vps = ab.examples.vps.toplevel;
      };

      lib = {
        # mkSystem { modules = [ ... ]; config = { ... }; } -> { toplevel, initrd, etc, sw, kernel, config }
        # (x86_64-linux; pass pkgs to mkSystemWith for another nixpkgs instance).
        mkSystem = ab.mkSystem;
        mkSystemWith = pkgs: (import ./nix { inherit pkgs; }).mkSystem;
      };

      # The nixpkgs-free test fixture (nix/fixture) needs host files and impure evaluation:
      # build it with scripts/build-fixture.sh, not through the flake.
    };
}
