# Stands in for the nixpkgs input of flake.nix (with --override-input nixpkgs path:...): the
# flake does `import nixpkgs { system = ...; }`, which reads default.nix here. See docs/nix.md.
{ outputs = _: { }; }
