"""The project's one base exception.

Every error the library raises about its inputs (a flag, an argument, a file,
a folder) derives from `MatEffNetError`, so each binary catches exactly one
class and prints it as ``mat-effnet-X: error: <message>`` with exit code 2
(`mat_effnet.common.cli`). Messages name what is wrong first, in one style:

    ``name=value: why`` for an argument (the binaries show it as ``--name``),
    ``<path>: why`` for a file or folder.

It derives from ValueError because every such error is a bad value handed in
by the user, and callers that caught ValueError before keep working.
"""

from __future__ import annotations


class MatEffNetError(ValueError):
    """A problem with what the user handed in, in one line naming it."""


def bad_argument(name: str, value, why: str) -> MatEffNetError:
    """The error for argument ``name`` holding ``value``: 'name=value: why'."""
    return MatEffNetError(f"{name}={value}: {why}")
