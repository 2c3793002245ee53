# mkSystem evaluated and built against mock-nixpkgs.nix (no nixpkgs needed):
#   nix-instantiate nix/tests/mock-system.nix -A vps.toplevel --argstr abupdate "$PWD/<static abupdate>"
#   nix-build --option sandbox false nix/tests/mock-system.nix -A bootable.toplevel --argstr abupdate ...
# "bootable" is the example VPS system adjusted to what the mock can really run (see vps-test.nix).
{ abupdate ? null, kernelVersion ? null }:
let
  pkgs = import ./mock-nixpkgs { inherit abupdate kernelVersion; };
  ab = import ../default.nix { inherit pkgs; };
in
{
  vps = ab.examples.vps;
  bootable = ab.mkSystem { modules = [ ../examples/vps.nix ./vps-test.nix ]; };
}
