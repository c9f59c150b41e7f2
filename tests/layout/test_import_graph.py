"""The house rules of the code base, checked on its source: imports flow from applications down to the
method and the kernels, never back, and no two modules import each other (directly or around a circle).

Every import counts, function-local ones included (they run too, only later). Each module is parsed
with `ast`, not imported, so the check sees the code as written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qvgen", "qvgen_kernels", "benchmarks")

# Layers from the top down; a module may import its own layer or a lower one. The longest matching
# prefix places a module. docs/architecture.md draws the same picture.
LAYERS: list[tuple[str, ...]] = [
    ("benchmarks",),
    ("qvgen.apps", "qvgen.__main__"),
    ("qvgen.train",),
    ("qvgen.data",),
    ("qvgen.models",),
    ("qvgen", "qvgen._moved"),  # the public API: qvgen/__init__.py
    ("qvgen.artifact",),
    ("qvgen.quant",),
    ("qvgen.distributed", "qvgen.storage"),
    ("qvgen_kernels",),  # the kernel library's facade: qvgen_kernels/__init__.py
    ("qvgen_kernels.ops",),
    ("qvgen_kernels._ops",),
    ("qvgen_kernels.backends",),
    ("qvgen_kernels.registry",),
    ("qvgen_kernels.triton", "qvgen_kernels.reference", "qvgen_kernels._extension"),
    ("qvgen_kernels.format", "qvgen_kernels.errors"),
]


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return rank


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a non-module attribute: its module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imports_of(m, f, set(files)) for m, f in files.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_imports_flow_down(graph):
    upward = sorted(f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {d} (layer {LAYERS[layer_of(d)][0]})"
                    for m, deps in graph.items() for d in deps if layer_of(d) < layer_of(m))
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None; iterative DFS."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
                path.append(nxt)
    return None


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_cycles_and_upward_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("qvgen.apps.cli") < layer_of("qvgen.train.distill") < layer_of("qvgen.quant.qlinear")
    assert layer_of("qvgen.quant.qlinear") < layer_of("qvgen_kernels.format")


def test_function_local_imports_are_counted(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from qvgen.apps import cli\n    import qvgen.train.distill\n")
    assert imports_of("qvgen.quant.x", f, {"qvgen.apps", "qvgen.apps.cli", "qvgen.train", "qvgen.train.distill"}) \
        == {"qvgen.apps.cli", "qvgen.train.distill"}
