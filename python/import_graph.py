"""The crate's import graph: for every module of src/ (a file, or a folder's mod.rs), the modules
it names through `crate::…`, `super::…` and `self::…` paths (in `use` items and in code), at a
chosen depth, and the cycles among them (strongly connected components of more than one module).

    python3 python/import_graph.py [--depth 2] [--dot OUT.dot] [--edges]

Depth 1 groups by top-level module (`backend`, `nn`, `pipelines`, …), depth 2 by the next level
(`backend::cuda`, `pipelines::train`, …). A module's own submodules and `super::` paths are not
edges of the graph at its depth. Standard library only.
"""

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def module_of(path: pathlib.Path):
    """The module path of a source file: src/backend/cuda/conv.rs → backend::cuda::conv."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return parts[0]
    return "::".join(parts)


def cut(module: str, depth: int) -> str:
    return "::".join(module.split("::")[:depth])


USE_BLOCK = re.compile(r"\buse\s+((?:crate|super|self)(?:::super)*)::\{([^;]*)\};", re.S)
PATH = re.compile(r"\b((?:crate|super|self)(?:::super)*)::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)")


def base_of(me: str, is_mod_file: bool, anchor: str):
    """The module an anchor (`crate`, `self`, `super`, `super::super`, …) names from module `me`
    (its file a folder's mod.rs when `is_mod_file`)."""
    if anchor == "crate":
        return []
    parts = me.split("::") if me not in ("lib", "main") else []
    # a file's `self` is its module; `super` its parent
    ups = anchor.split("::").count("super")
    if anchor.startswith("self"):
        return parts
    return parts[: len(parts) - ups] if ups <= len(parts) else []


def targets(text: str, modules: set, me: str, is_mod_file: bool):
    """The longest module prefixes of every `crate::`, `self::` and `super::` path in `text`."""
    found = set()
    paths = [(m.group(1), m.group(2)) for m in PATH.finditer(text)]
    for block in USE_BLOCK.finditer(text):
        # `use super::{a::b, c::{d, e}}`: the first segment of each item
        for item in re.split(r"[,{}\s]+", block.group(2)):
            if item:
                paths.append((block.group(1), item))
    for anchor, p in paths:
        segs = base_of(me, is_mod_file, anchor) + p.split("::")
        for n in range(len(segs), 0, -1):
            cand = "::".join(segs[:n])
            if cand in modules:
                found.add(cand)
                break
    return found


def graph(depth: int):
    files = [p for p in SRC.rglob("*.rs")]
    modules = {module_of(p) for p in files}
    edges = {}
    for p in files:
        me = module_of(p)
        if me == "main":
            continue
        text = re.sub(r"//[^\n]*", "", p.read_text())
        for t in targets(text, modules, me, p.name == "mod.rs"):
            a, b = cut(me, depth), cut(t, depth)
            if a != b and not b.startswith(a + "::") and not a.startswith(b + "::"):
                edges.setdefault(a, set()).add(b)
    return edges


def cycles(edges):
    """Tarjan's strongly connected components of more than one node."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    nodes = set(edges) | {b for bs in edges.values() for b in bs}
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--edges", action="store_true", help="print every edge")
    ap.add_argument("--dot", type=pathlib.Path)
    args = ap.parse_args()
    edges = graph(args.depth)
    n = sum(len(v) for v in edges.values())
    print(f"{len(set(edges) | {b for bs in edges.values() for b in bs})} modules, {n} edges (depth {args.depth})")
    if args.edges:
        for a in sorted(edges):
            print(f"{a} -> {', '.join(sorted(edges[a]))}")
    cyc = cycles(edges)
    for c in cyc:
        inner = [f"{a} -> {b}" for a in c for b in sorted(edges.get(a, ())) if b in c]
        print("cycle: " + "; ".join(inner))
    if not cyc:
        print("no cycles")
    if args.dot:
        lines = ["digraph imports {"] + [f'  "{a}" -> "{b}";' for a in sorted(edges) for b in sorted(edges[a])] + ["}"]
        args.dot.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
