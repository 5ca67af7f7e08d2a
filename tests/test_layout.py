"""No import circles in rlaif/ or bench/: every `import` and `from ... import` statement, at any depth
(those inside functions too: a lazy import breaks a circle at run time, not in the design), walked with
`ast`, resolved to the project's own modules; then Tarjan's strongly connected components
(Tarjan 1972, "Depth-first search and linear graph algorithms"). A component of two or more modules,
or a module importing itself, is a circle. bench/ scripts import their siblings by bare name
(`import generate_common`), as Python does when a script's folder is on sys.path.

A package's __init__.py is the module `rlaif.judge` itself: `from rlaif.judge import stage` is an
edge to rlaif.judge.stage (a submodule), `from rlaif.judge.backends import Call` an edge to the
package module, whose own imports are walked like any file's.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, folder: str) -> dict[str, Path]:
    """module name -> file, for every .py under root/folder (bench/ files by their bare name)."""
    out = {}
    for f in sorted((root / folder).rglob("*.py")):
        rel = f.relative_to(root / folder if folder == "bench" else root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules that `name` (at `path`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` names a submodule when one exists, else an attribute of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import rlaif.judge.stage` also runs rlaif.judge: keep the deepest known
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    return found


def graph(root: Path = ROOT, folders=("rlaif", "bench")) -> dict[str, set[str]]:
    g = {}
    for folder in folders:
        known = modules(root, folder)
        for name, path in known.items():
            g[name] = imports(name, path, known)
    return g


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's SCC; components of 2+ modules, and self-imports, are returned, sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # the module graph is a few hundred nodes deep at most: recursion is fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
            if len(comp) > 1 or v in g.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def describe(g, comp) -> str:
    """The shortest loop through the component's first module (breadth-first), as a -> b -> ... -> a,
    and how many modules the whole component holds."""
    start, inside = comp[0], set(comp)
    prev, queue = {start: None}, [start]
    for v in queue:
        for w in sorted(g[v] & inside):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                loop = [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start][: 2 + (v != start)]
                return " -> ".join(loop) + f" ({len(comp)} modules in this circle)"
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return ", ".join(comp)


def test_no_import_circles_in_rlaif_or_bench():
    g = graph()
    assert "rlaif.judge.stage" in g and "generate_common" in g, sorted(g)  # the walk saw both trees
    found = circles(g)
    assert not found, "import circles: " + " | ".join(describe(g, c) for c in found)


def test_a_circle_added_on_purpose_is_found(tmp_path):
    """The detector itself: a copy of rlaif/ with one import added that closes a circle
    (rlaif.io -> rlaif.judge.stage -> rlaif.io), and one deep inside a function, must be reported."""
    import shutil

    shutil.copytree(ROOT / "rlaif", tmp_path / "rlaif")
    (tmp_path / "bench").mkdir()
    assert circles(graph(tmp_path)) == []
    io = tmp_path / "rlaif" / "io.py"
    io.write_text(io.read_text() + "\n\ndef _late():\n    from rlaif.judge import stage  # noqa\n    return stage\n")
    found = circles(graph(tmp_path))
    assert found and any({"rlaif.io", "rlaif.judge.stage"} <= set(c) for c in found), found


def test_relative_and_package_imports_resolve(tmp_path):
    """`from . import x`, `from .. import y` and `from pkg import name` reach the files Python would load."""
    pkg = tmp_path / "rlaif" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "bench").mkdir()
    (tmp_path / "rlaif" / "__init__.py").write_text("")
    (tmp_path / "rlaif" / "top.py").write_text("from rlaif.sub import leaf\n")
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "leaf.py").write_text("from .. import top\nfrom . import X\n")
    g = graph(tmp_path)
    assert g["rlaif.top"] == {"rlaif.sub.leaf"}
    assert g["rlaif.sub.leaf"] == {"rlaif.top", "rlaif.sub"}
    assert circles(g) == [["rlaif.sub.leaf", "rlaif.top"]]
