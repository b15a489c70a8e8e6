"""The layers of the tree: which room may import which, and no circle.

Three roots, each with one role: ``experiments`` (binaries) may import the
other two; ``data_prep`` (building datasets) imports ``mat_effnet``; the
library ``mat_effnet`` imports neither, except ``mat_effnet.benchmark``, which
measures preparation too. Inside ``mat_effnet`` the rooms are layered
(`ALLOWED`): a room imports only the rooms listed for it, so a lower room never
imports a higher one.

Every import counts, wherever it stands: at module level, inside a function
(a lazy import is still a dependency) or under ``if TYPE_CHECKING:`` (a
type-only import still means the two modules know each other), so the graph
is read from the source with `ast` rather than from ``sys.modules``.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("mat_effnet", "data_prep", "experiments")

# What each room may import, besides itself. "mat_effnet" is the package's own
# __init__: it imports only the front door, `VideoClassifier`, lazily (on first
# use, so that the package imports without TensorFlow); the roots data_prep
# and experiments are rooms of their own.
_LOW = ("mat_effnet",)
ALLOWED = {
    "mat_effnet": {"mat_effnet.serving"},
    "mat_effnet.common": {*_LOW},
    "mat_effnet.ops": {*_LOW, "mat_effnet.common"},
    "mat_effnet.records": {*_LOW, "mat_effnet.common", "mat_effnet.ops"},
    "mat_effnet.data": {*_LOW, "mat_effnet.common", "mat_effnet.ops", "mat_effnet.records"},
    "mat_effnet.encoding": {*_LOW, "mat_effnet.common", "mat_effnet.ops", "mat_effnet.records"},
    "mat_effnet.modeling": {*_LOW, "mat_effnet.common"},
    "mat_effnet.training": {*_LOW, "mat_effnet.common", "mat_effnet.ops", "mat_effnet.records",
                            "mat_effnet.data", "mat_effnet.modeling"},
    "mat_effnet.evaluation": {*_LOW, "mat_effnet.common", "mat_effnet.ops", "mat_effnet.records",
                              "mat_effnet.data", "mat_effnet.modeling"},
}
ALLOWED["mat_effnet.serving"] = {
    *_LOW, "mat_effnet.common", "mat_effnet.ops", "mat_effnet.records", "mat_effnet.data",
    "mat_effnet.encoding", "mat_effnet.modeling", "mat_effnet.training", "mat_effnet.evaluation"}
ALLOWED["mat_effnet.benchmark"] = set(ALLOWED["mat_effnet.serving"]) | {"mat_effnet.serving",
                                                                       "data_prep"}
ALLOWED["mat_effnet.webapp"] = set(ALLOWED["mat_effnet.serving"]) | {"mat_effnet.serving"}
ALLOWED["data_prep"] = {room for room in ALLOWED
                        if room not in ("mat_effnet.benchmark", "mat_effnet.webapp")}
ALLOWED["experiments"] = set(ALLOWED) - {"experiments"}


def module_files(root_dir: str, roots=ROOTS) -> dict[str, str]:
    """Dotted module name -> file, for every ``*.py`` under the roots."""
    found = {}
    for root in roots:
        for folder, _, names in os.walk(os.path.join(root_dir, root)):
            for name in names:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), root_dir)[:-3]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = os.path.join(folder, name)
    return found


def imported_names(path: str, module: str) -> set[tuple[str, ...]]:
    """Every dotted name ``path`` imports, wherever the import stands.

    Each is a tuple of readings, most specific first: ``from pkg import a``
    imports the module ``pkg.a`` where there is one, else a name of ``pkg``.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    is_package = path.endswith("__init__.py")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.name,) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.update((f"{base}.{a.name}", base) for a in node.names)
    return names


def room_of(module: str) -> str | None:
    """The room a module lives in: a root, or a subpackage of mat_effnet."""
    parts = module.split(".")
    if parts[0] not in ROOTS:
        return None
    if parts[0] == "mat_effnet" and len(parts) > 1 and f"mat_effnet.{parts[1]}" in ALLOWED:
        return f"mat_effnet.{parts[1]}"
    return parts[0]


def import_graph(root_dir: str, roots=ROOTS) -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    files = module_files(root_dir, roots)
    graph = {}
    for module, path in files.items():
        targets = set()
        for readings in imported_names(path, module):
            # the first reading, and its longest prefix, that is a module of the tree
            found = [".".join(r.split(".")[:n]) for r in readings
                     for n in range(len(r.split(".")), 0, -1)
                     if ".".join(r.split(".")[:n]) in files]
            if found:
                targets.add(found[0])
        graph[module] = targets - {module}
    return graph


def upward_imports(graph: dict[str, set[str]], allowed=ALLOWED) -> list[str]:
    """'a imports b (room A may not import room B)' for every import the table forbids."""
    bad = []
    for module, targets in sorted(graph.items()):
        mine = room_of(module)
        for target in sorted(targets):
            theirs = room_of(target)
            if mine is None or theirs is None or theirs == mine:
                continue
            if theirs not in allowed.get(mine, ()):
                bad.append(f"{module} imports {target} ({mine} may not import {theirs})")
    return bad


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


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT)


def test_every_room_is_in_the_table(graph):
    rooms = {room_of(m) for m in graph}
    assert rooms == set(ALLOWED), rooms ^ set(ALLOWED)


def test_no_room_imports_upwards(graph):
    # The graph was read: known edges are there.
    assert "mat_effnet.records.schema" in graph["mat_effnet.records.metadata"]
    assert "mat_effnet.common.cli" in graph["experiments.train"]
    assert "mat_effnet.encoding.encode" in graph["data_prep.work_files"]
    assert upward_imports(graph) == []


def test_no_module_imports_itself_in_a_circle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_library_never_imports_data_prep_or_experiments(graph):
    for module, targets in graph.items():
        if module.startswith("mat_effnet.") and not module.startswith("mat_effnet.benchmark"):
            assert not {t for t in targets if t.split(".")[0] in ("data_prep", "experiments")}, module


def test_no_two_modules_share_a_file_name():
    seen = {}
    for module, path in module_files(ROOT).items():
        name = os.path.basename(path)
        if name in ("__init__.py", "__main__.py"):
            continue
        assert name not in seen, f"{path} and {seen[name]}"
        seen[name] = path


@pytest.mark.parametrize("style", [
    "from mat_effnet.serving import streaming\n",
    "from mat_effnet.serving.streaming import Thing\n",
    "import mat_effnet.serving.streaming\n",
    "def f():\n    from mat_effnet.serving import streaming\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mat_effnet.serving.streaming import X\n",
    "from ..serving import streaming\n",
])
def test_a_planted_upward_import_is_found_however_it_is_written(tmp_path, style):
    # A tiny tree of the same shape: ops (low) importing serving (high).
    for pkg in ("mat_effnet", "mat_effnet/ops", "mat_effnet/serving"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "mat_effnet/serving/streaming.py").write_text("from mat_effnet.ops import video\n")
    (tmp_path / "mat_effnet/ops/video.py").write_text("import os\n")
    graph = import_graph(str(tmp_path), ("mat_effnet",))
    assert upward_imports(graph) == []
    (tmp_path / "mat_effnet/ops/video.py").write_text(style)
    graph = import_graph(str(tmp_path), ("mat_effnet",))
    assert upward_imports(graph) == [
        "mat_effnet.ops.video imports mat_effnet.serving.streaming "
        "(mat_effnet.ops may not import mat_effnet.serving)"]
    assert find_cycle(graph) == ["mat_effnet.ops.video", "mat_effnet.serving.streaming",
                                 "mat_effnet.ops.video"]
