# `import nixpkgs { ... }` for flake.nix, backed by ../mock-nixpkgs.nix (needs --impure: it reads
# host files). ABUPDATE_STATIC: the static abupdate binary, if abupdate should be real.
{ ... }:
let p = builtins.getEnv "ABUPDATE_STATIC";
in import ../mock-nixpkgs.nix { abupdate = if p == "" then null else p; }
