# Lets this directory stand in for the nixpkgs input of flake.nix
# (--override-input nixpkgs path:<abs>/nix/tests/mock-nixpkgs --impure): the flake does
# `import nixpkgs { system = ...; }`, which reads default.nix here. See docs/nix.md.
{ outputs = _: { }; }
