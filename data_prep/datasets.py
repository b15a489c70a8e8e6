"""The supported datasets and `load_layout`, which reads one's tree with its reader.

`load_layout` checks the arguments once, then hands the data root to the
reader of the dataset (plain code, no registry): ``ucf101``
(`data_prep.layout_ucf101`), ``hmdb51`` (`data_prep.layout_hmdb51`) -- the
paper's benchmarks, Sect. 4.1 -- ``kinetics400``
(`data_prep.layout_kinetics400`) and ``folder`` (`data_prep.layout_folder`).
The types they return and the helpers they share live in
`data_prep.layouts`. Kept apart from that module so that the readers
import the common part and this module imports the readers: no circle.
"""

from __future__ import annotations

import numbers
import os

from data_prep import layout_folder, layout_hmdb51, layout_kinetics400, layout_ucf101
from data_prep import rawframes
from data_prep.layouts import FrameFolders, Layout, LayoutError, one_line

DATASETS = ("ucf101", "hmdb51", "kinetics400", "folder")


def load_layout(dataset: str, data_root: str, split: int = 1,
                split_file: str | None = None,
                test_fraction: float = 0.3, frames_root: str | None = None,
                frames_layout: str = "rawframes") -> Layout:
    """Reads the layout of `dataset` under `data_root`.

    `split` selects the official split (1..3) of UCF101 and HMDB51 and is
    ignored by the other readers. `split_file` and `test_fraction` are used by
    the ``folder`` reader only. Raises `LayoutError` when the arguments or the
    tree cannot give a usable layout.
    """
    name = str(dataset).strip().lower()
    if name not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    # bool is an int subclass; True would silently mean split 1.
    if isinstance(split, bool) or not isinstance(split, numbers.Integral) or not 1 <= split <= 3:
        raise LayoutError(f"split must be 1, 2 or 3, got {split!r}")
    if split_file is not None and name != "folder":
        raise LayoutError(f"split_file is only used with the folder dataset, not {name} "
                          "(which ships its own split lists)")
    if name == "folder" and split_file is None:
        if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
            raise LayoutError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    root = _check_root(data_root)
    frames = None
    if frames_root is not None:
        if frames_layout not in rawframes.LAYOUTS:
            raise LayoutError(f"frames_layout={frames_layout}: expected one of "
                              f"{', '.join(rawframes.LAYOUTS)}")
        frames = FrameFolders(_check_root(frames_root, "--frames_root"), frames_layout)
    if name == "ucf101":
        return layout_ucf101.load(root, int(split), frames)
    if name == "hmdb51":
        return layout_hmdb51.load(root, int(split), frames)
    if name == "kinetics400":
        return layout_kinetics400.load(root, frames)
    return layout_folder.load(root, split_file, float(test_fraction), frames)


def _check_root(data_root, flag: str = "--data_root") -> str:
    """``data_root`` as an absolute path; `LayoutError` unless it is an existing folder."""
    raw = os.fspath(data_root)
    root = os.path.abspath(os.path.expanduser(raw))
    if not os.path.exists(root):
        raise LayoutError(one_line(f"{flag} {raw} does not exist"))
    if not os.path.isdir(root):
        raise LayoutError(one_line(f"{flag} {raw} is not a directory"))
    return root
