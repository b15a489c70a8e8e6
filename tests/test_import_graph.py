"""The modules of data_prep import each other without a circle.

Every import counts, wherever it stands: at module level, inside a function
(a lazy import is still a dependency) or under ``if TYPE_CHECKING:`` (a
type-only import still means the two modules know each other), so the
graph is read from the source with `ast` rather than from ``sys.modules``.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_graph(package_dir: str, package: str) -> dict[str, set[str]]:
    """Module name -> the modules of ``package`` it imports, for every ``*.py`` in ``package_dir``."""
    modules = {name[:-3] for name in os.listdir(package_dir)
               if name.endswith(".py") and name != "__init__.py"}
    graph = {}
    for module in sorted(modules):
        with open(os.path.join(package_dir, module + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package if node.level else node.module or ""
                if node.level and node.module:
                    base = f"{package}.{node.module}"
                # "from pkg import a, b" names submodules; "from pkg.a import x" names pkg.a.
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if len(parts) >= 2 and parts[0] == package and parts[1] in modules:
                    targets.add(parts[1])
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_data_prep_has_no_import_cycle():
    graph = import_graph(os.path.join(ROOT, "data_prep"), "data_prep")
    # The graph was read: the driver imports its steps.
    assert {"prep_config", "work_files", "shards", "flow_batches"} <= graph["builder"]
    assert graph["prep_config"] <= {"encode", "flow", "video", "rawframes"}  # the settings sit low
    assert graph["rawframes"] == set()  # the frame-folder conventions are a leaf
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("style", [
    "from pkg import b\n",
    "from pkg.b import Thing\n",
    "import pkg.b\n",
    "def f():\n    from pkg import b\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import Thing\n",
])
def test_a_circle_is_found_however_it_is_imported(tmp_path, style):
    # The circle issue 19 removed (builder <-> flow_batches, one side
    # type-only), in each import style the check must see.
    (tmp_path / "a.py").write_text(style)
    (tmp_path / "b.py").write_text("import os\nfrom pkg import a\n")
    (tmp_path / "c.py").write_text("from pkg import b\n")
    graph = import_graph(str(tmp_path), "pkg")
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"b"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    (tmp_path / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(str(tmp_path), "pkg")) is None
