#!/usr/bin/env python3
"""house.py — the shape of the C code: file circles and long functions.

  tools/dev/house.py [BUILD]          (default build/; needs `make` first)

File graph: file A -> file B when A's object uses a global symbol that B's
object defines (`nm`, so macros, comments and strings cannot fool it). A
circle is a strongly connected component of more than one file: two files
that call each other, directly or around a loop. Function lengths come from
the sources: a definition starts at a line opening a function at column 0
and ends at the `}` in column 0 that closes it.

Prints the circles, the functions over the limit (100 lines) and the longest
ones; exits 1 when there is a circle or a function over the limit. The test
suite runs it (tests/py/test_house.py), and docs/architecture.md draws the
rooms it checks.
"""
import os, re, subprocess, sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIMIT = 100
ROOMS = ["src/core", "src/io", "src/pipeline", "src/runtime", "src/server", "src/cli"]


def objects(build):
    out = []
    for room in ROOMS:
        d = os.path.join(build, room)
        if os.path.isdir(d):
            out += [os.path.join(room, f[:-2]) for f in sorted(os.listdir(d)) if f.endswith(".o")]
    return out


def symbols(build, stem):
    """-> (defined globals, undefined) of one object."""
    obj = os.path.join(build, stem + ".o")
    p = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=True)
    defined, used = set(), set()
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            used.add(name)
        elif kind in "TDBRV" or kind in "W":
            defined.add(name)
    return defined, used


def graph(build):
    stems = objects(build)
    defs, uses = {}, {}
    for s in stems:
        defs[s], uses[s] = symbols(build, s)
    owner = {}
    for s in stems:
        for name in defs[s]:
            owner.setdefault(name, s)
    edges = {s: set() for s in stems}
    for s in stems:
        for name in uses[s]:
            t = owner.get(name)
            if t and t != s:
                edges[s].add(t)
    return edges


def circles(edges):
    """Tarjan's strongly connected components of size > 1."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


START = re.compile(r"^[A-Za-z_][\w \t\*]*?\b(\w+)\s*\([^;]*$")


def functions(path):
    """-> [(name, first line, length)] of the function definitions in path."""
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = START.match(lines[i])
        if m and not lines[i].startswith(("typedef", "struct", "enum", "union", "#", "static const", "const")) \
                or (m and re.match(r"^(static |const )", lines[i]) and "(" in lines[i] and "=" not in lines[i]):
            j = i
            while j < len(lines) and lines[j] != "{" and not lines[j].endswith(";") and j - i < 8:
                if lines[j].endswith("{") and lines[j].startswith(("{",)):
                    break
                j += 1
            if j < len(lines) and lines[j] == "{":
                k = j + 1
                while k < len(lines) and lines[k] != "}":
                    k += 1
                out.append((m.group(1), i + 1, k - i + 1))
                i = k + 1
                continue
        i += 1
    return out


def sources():
    for room in ROOMS:
        d = os.path.join(ROOT, room)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if f.endswith((".c", ".cc")):
                yield os.path.join(room, f)


def main():
    build = os.path.join(ROOT, sys.argv[1] if len(sys.argv) > 1 else "build")
    bad = 0
    cs = circles(graph(build))
    for c in cs:
        print("circle: " + " <-> ".join(c))
    bad += len(cs)
    allf = []
    for src in sources():
        for name, line, n in functions(os.path.join(ROOT, src)):
            allf.append((n, f"{src}:{line}", name))
    allf.sort(reverse=True)
    over = [f for f in allf if f[0] > LIMIT]
    for n, where, name in over:
        print(f"long: {name} {n} lines ({where})")
    bad += len(over)
    print(f"{len(cs)} circles, {len(over)} functions over {LIMIT} lines; longest: " +
          ", ".join(f"{name} {n}" for n, _, name in allf[:5]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
