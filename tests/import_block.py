"""Imports that fail, as on a machine without a package.

An import hook on ``sys.meta_path`` that raises ModuleNotFoundError for
chosen top-level packages. Setting ``sys.modules[name] = None`` is not the
same: Keras's preprocessing layers then believe TensorFlow is loaded.
`Blocker` is the hook for this process; `hook_source` is the same class as
the head of a ``python -c`` program.
"""

import inspect


class Blocker:
    """Refuses every module under the top-level ``packages``."""

    def __init__(self, packages):
        self.packages = frozenset(packages)

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in self.packages:
            raise ModuleNotFoundError(f"No module named {name!r} ({top} is blocked)")
        return None


def hook_source(*packages: str) -> str:
    """Python source that installs a `Blocker` of ``packages`` first in ``sys.meta_path``."""
    return (f"import sys\n{inspect.getsource(Blocker)}\n"
            f"sys.meta_path.insert(0, Blocker({sorted(packages)!r}))\n")
