# mkSystem: a whole device system on nixpkgs' pkgsMusl, as a toplevel with the contract of
# docs/layout.md (kernel, initrd, init, kernel-params, etc/), ready for `abbuild build --system`.
#
#   mkSystem { modules = [ ./a.nix ./b.nix ]; config = { hostname = "x"; }; }
#
# A module is an attribute set, a function { config, pkgs, pkgsMusl, ... }: attrs, or a path to
# either. Modules are merged in order on top of the defaults in ./options.nix: attribute sets merge
# recursively, lists are concatenated (without repeating elements), anything else is replaced by
# the later module; { __replace = v; } replaces instead of merging. Unknown option names are
# errors. docs/nix.md lists the options.
{ pkgs, abupdate }:
{ modules ? [ ], config ? { } }:
let
  pkgsMusl = pkgs.pkgsMusl;

  isDrv = v: builtins.isAttrs v && v ? type && v.type == "derivation";
  # { __replace = v; } stands for v, replacing what earlier modules (and the defaults) set
  # instead of merging with it: consoles = { __replace = [ "tty1" ]; }.
  unwrap = v: if builtins.isAttrs v && v ? __replace then v.__replace else v;
  merge = a: b:
    if builtins.isAttrs b && b ? __replace then b.__replace
    else if builtins.isAttrs a && builtins.isAttrs b && !isDrv a && !isDrv b then
      a // builtins.mapAttrs (n: bv: if a ? ${n} then merge a.${n} bv else unwrap bv) b
    # Lists are concatenated; an element already there is not added again.
    else if builtins.isList a && builtins.isList b then a ++ builtins.filter (x: !(builtins.elem x a)) b
    else b;

  args = { config = cfg; inherit pkgs pkgsMusl abupdate; };
  load = m:
    if builtins.isPath m || builtins.isString m then load (import m)
    else if builtins.isFunction m then m args
    else m;

  defaults = import ./options.nix args;

  # Option names are checked against the defaults down to the groups that are fixed; groups whose
  # keys are free (users, etc, services, networking.interfaces) are not.
  freeform = [ "users" "etc" "services" "interfaces" ];
  check = path: d: m:
    builtins.mapAttrs
      (n: v:
        if !(d ? ${n}) then throw "mkSystem: unknown option ${path}${n}"
        else if builtins.isAttrs v && !isDrv v && !(v ? __replace) && builtins.isAttrs d.${n} && !isDrv d.${n}
          && !(builtins.elem n freeform)
        then check "${path}${n}." d.${n} v
        else v)
      m;

  cfg = builtins.foldl' (acc: m: merge acc (check "" defaults (load m))) defaults (modules ++ [ config ]);
in
import ./build.nix { inherit pkgs pkgsMusl cfg; }
