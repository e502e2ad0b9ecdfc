#!/usr/bin/env python3
"""Which module of src/ uses which (non-test code, comments left out), and any two that use
each other: `python3 scripts/imports.py` prints the graph, then `cycles:` and one line per
pair. The layout's rule is that this list is empty."""
import glob
import os
import re
import sys

os.chdir(sys.argv[1] if len(sys.argv) > 1 else ".")
files = sorted(glob.glob("src/**/*.rs", recursive=True))
name = {f: f[4:-3].replace("/mod", "").replace("/", "::") for f in files}
modules = set(name.values())
graph = {}
for f in files:
    me = name[f]
    parent = me.rsplit("::", 1)[0] if "::" in me else ""
    code = open(f).read().split("#[cfg(test)]")[0]
    code = "\n".join(l for l in code.splitlines() if not l.strip().startswith("//"))
    # `crate::a::b`, `crate::a::{b, c::d}`, `super::b`; and a parent's `mod b;` used as `b::`.
    paths = []
    for base, rest in re.findall(r"\b(crate|super)::([\w:]+(?:\{[^}]*\})?)", code):
        prefix = "" if base == "crate" else parent + "::" * bool(parent)
        head, _, braces = rest.partition("{")
        heads = [head + item.strip() for item in braces.rstrip("}").split(",")] if braces else [head]
        paths += [prefix + h.strip(":") for h in heads]
    for child in re.findall(r"^\s*(?:pub(?:\(\w+\))? )?mod (\w+);", code, re.M):
        if re.search(r"\b" + child + r"::", code):
            paths.append((me + "::" if me != "lib" else "") + child)
    uses = set()
    for p in paths:
        parts = p.split("::")
        # The longest prefix of the path that is a module.
        for n in range(len(parts), 0, -1):
            if "::".join(parts[:n]) in modules:
                uses.add("::".join(parts[:n]))
                break
    graph[me] = uses - {me}
for me in sorted(graph):
    print(me, "->", ", ".join(sorted(graph[me])))
print("cycles:")
cycles = [(a, b) for a in sorted(graph) for b in sorted(graph[a]) if a < b and a in graph.get(b, ())]
for a, b in cycles:
    print(" ", a, "<->", b)
# CI fails on a cycle (.ci/run).
sys.exit(1 if cycles else 0)
