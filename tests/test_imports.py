"""The package's imports form a DAG that follows DESIGN.md's layers, so the transplant core's old cycles
(builtin -> transplant -> builtin, builtin -> transplant -> models -> builtin) cannot come back."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import graftkit

SRC = Path(graftkit.__file__).parent

# Lower layers never import higher ones (DESIGN.md, "Layers"); the top-level helpers sit where their
# imports put them: the transplant core below the package and the model references that use it.
LAYERS = ["errors", "atomic", "fastjson", "progress", "layout", "meta", "formats", "nets", "grafting", "package", "builtin",
          "models", "api", "data", "tune", "train", "advise", "tasks", "serve", "report", "cli"]
# serve.demo runs the whole pipeline, the report included: a workflow above report that lives in serve/.
UPWARD_ALLOWED = {("graftkit.serve.demo", "graftkit.report")}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the graftkit modules it imports, at module level or inside functions (a lazy import is
    still a dependency: both old cycles ran through imports inside functions). A module importing one
    of its own parent packages is left out: Python imports the parents first anyway. Imports under
    `if TYPE_CHECKING:` never run, so they are left out too (annotations only)."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        tree = ast.parse(f.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = (base + (f".{node.module}" if node.module else "")) if node.level else node.module
                names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name and name.split(".")[0] == "graftkit" else None
                if target and target != m and not m.startswith(target + "."):
                    graph[m].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "graftkit.grafting" in graph["graftkit.builtin"]  # imported inside builtin.graft()
    assert "graftkit.models" in graph["graftkit.api"]        # imported inside api.source_tensors()


def test_no_import_cycle_among_graftkit_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_follow_the_layers():
    def layer(m: str) -> str:
        return m.split(".")[1] if "." in m else ""

    graph = import_graph()
    assert {layer(m) for m in graph} - {""} <= set(LAYERS), "a new top-level module: place it in LAYERS"
    upward = [(m, t) for m, ts in graph.items() for t in ts if layer(m) and layer(t)
              and LAYERS.index(layer(t)) > LAYERS.index(layer(m)) and (m, t) not in UPWARD_ALLOWED]
    assert not upward, f"lower layers import higher ones: {sorted(upward)}"


def test_the_transplant_core_loads_no_model_layer():
    code = ("import sys, graftkit.grafting; "
            "print(sorted(m for m in sys.modules if m.startswith('graftkit.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(eval(r.stdout))
    assert loaded.isdisjoint({"graftkit.builtin", "graftkit.models", "graftkit.package", "graftkit.api"}), loaded


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(_modules())
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
