# Which module files (paths relative to lib/modules/<version>/) a list of module names needs,
# dependencies included, read from modules.dep at evaluation time. Pure Nix, no nixpkgs: the
# fixture uses it to import only these files from the host's /lib/modules with builtins.path.
# The load order itself is computed again at build time by nix/initrd/mkinitrd.sh.
{ modulesDep, modulesBuiltin ? "", names }:
let
  lines = text: builtins.filter (l: builtins.isString l && l != "") (builtins.split "\n" text);
  words = s: builtins.filter (w: builtins.isString w && w != "") (builtins.split " +" s);
  normalise = builtins.replaceStrings [ "-" ] [ "_" ];
  modName = path:
    let base = baseNameOf path;
    in normalise (builtins.head (builtins.match "([^.]*)\\.ko.*" base));

  entries = map
    (l:
      let m = builtins.match "([^:]+):(.*)" l;
      in { path = builtins.elemAt m 0; deps = words (builtins.elemAt m 1); })
    (lines modulesDep);
  byPath = builtins.listToAttrs (map (e: { name = e.path; value = e.deps; }) entries);
  byName = builtins.listToAttrs (map (e: { name = modName e.path; value = e.path; }) entries);
  builtinNames = map modName (lines modulesBuiltin);

  wanted = builtins.filter (n: !(builtins.elem n builtinNames)) (map normalise names);
  start = map
    (n:
      if byName ? ${n} then { key = byName.${n}; }
      else throw "kernel module ${n} is neither in modules.dep nor built in")
    wanted;
  closure = builtins.genericClosure {
    startSet = start;
    operator = item: map (d: { key = d; }) byPath.${item.key};
  };
in
map (i: i.key) closure
