#!/usr/bin/env python3
"""Lists the updater's module imports that run upward: each `crate::` or `super::` path in
updater/src, outside `#[cfg(test)]` modules, taken as an edge from the importing file's module
to the module it names. An edge is upward when it lies on a cycle (the two modules reach each
other), counted between files and between folders (the crate root's own files are each their
own room). Prints the upward edges and their counts; exits 1 when a folder-level one exists.
With --graph, also prints which rooms each room imports.
Usage: scripts/updater-imports.py [--graph] [updater/src]"""
import os
import re
import sys

args = [a for a in sys.argv[1:] if a != "--graph"]
root = args[0] if args else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "updater", "src")

mods = {}  # module path ("disk::gpt") -> source text without test modules
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs") or f == "main.rs":
            continue
        rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib"):
            rel = rel[:-1]
        text = open(os.path.join(d, f)).read()
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        text = re.sub(r"//[^\n]*", "", text)
        mods["::".join(rel)] = text

def resolve(segs):
    """The longest known module that is a prefix of `segs`, else the first segment."""
    for n in range(len(segs), 0, -1):
        if "::".join(segs[:n]) in mods:
            return "::".join(segs[:n])
    # An item of the crate root: `refuse!` is exported there but defined in codes.rs.
    return "codes" if segs[:1] == ["refuse"] else ""

def targets(name, text):
    out = set()
    me = name.split("::") if name else []
    for m in re.finditer(r"\b(crate|super)::((?:\w+::)*)(\{[^;]*?\}|\w+)", text):
        base = [] if m.group(1) == "crate" else me[:-1]
        head = [s for s in m.group(2).split("::") if s]
        tail = m.group(3)
        items = [tail] if not tail.startswith("{") else \
            [t.strip() for t in re.split(r",(?![^{]*\})", tail[1:-1]) if t.strip()]
        for it in items:
            segs = base + head + [s for s in re.split(r"::", it.split(" as ")[0]) if s and not s.startswith("{")]
            segs = [s for s in segs if s != "self"]
            t = resolve(segs)
            if t != name:
                out.add(t)
    return out

edges = {(a, b) for a, t in mods.items() for b in targets(a, t)}

def room(m):
    # A folder is a room; a file in the crate root is a room of its own.
    return m.split("::")[0] if "::" in m or os.path.isdir(os.path.join(root, m)) else m

def upward(es):
    nodes = {x for e in es for x in e}
    reach = {n: set() for n in nodes}
    for a, b in es:
        reach[a].add(b)
    changed = True
    while changed:
        changed = False
        for n in nodes:
            new = set().union(*(reach[m] for m in reach[n])) - reach[n]
            if new:
                reach[n] |= new
                changed = True
    return sorted((a, b) for a, b in es if a in reach[b])

files = upward(edges)
rooms = upward({(room(a), room(b)) for a, b in edges if room(a) != room(b)})
for a, b in files:
    print(f"file:   {a or 'lib'} -> {b or 'lib'}")
for a, b in rooms:
    print(f"folder: {a or 'lib'} -> {b or 'lib'}")
print(f"{len(edges)} imports; upward (on a cycle): {len(files)} between files, "
      f"{len(rooms)} between folders")
if "--graph" in sys.argv:
    for r in sorted({room(a) for a in mods}):
        print(f"{r or 'lib'}: " + " ".join(sorted({room(b) or "lib" for a, b in edges if room(a) == r and room(b) != r})))
sys.exit(1 if rooms else 0)
