"""The fusion report: the paper's table layout, fusion.json and a confusion matrix.

Tables 2-4 of the paper list spatial, temporal and two-stream accuracy; this
module prints that layout for any set of score files, and writes it as
``fusion.json`` plus ``confusion.png`` (atomically, the JSON last).
"""

from __future__ import annotations

import io
import json
import os

from mat_effnet.common import atomic
from mat_effnet.evaluation import fusion, metrics

# Beyond this many classes tick labels overlap into an unreadable block
# (Kinetics-400); the matrix alone still shows the diagonal's strength.
MAX_LABELLED_CLASSES = 60
# Keys of fusion.json besides the rows: a stream may not be named like them.
REPORT_KEYS = (fusion.TWO_STREAM, "weights", "num_videos", "files", "dataset", "split")



def format_table(rows: dict[str, dict]) -> str:
    """The layout of Tables 2-4: one row per stream, then the fusion."""
    width = max(12, *(len(name) for name in rows))
    header = f"{'stream':<{width}}  {'top-1 (%)':>9}  {'top-5 (%)':>9}  {'mean class acc. (%)':>19}"
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        lines.append(f"{name:<{width}}  {100 * r['top1']:>9.2f}  {100 * r['top5']:>9.2f}  "
                     f"{100 * r['mean_class_accuracy']:>19.2f}")
    return "\n".join(lines)


def plot_confusion(cm, class_names, path: str, title: str) -> None:
    """Writes the row-normalised confusion matrix as a PNG, atomically."""
    import numpy as np
    # Figure + the Agg canvas directly: no pyplot global state and no display
    # needed, so it works on headless machines.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    support = cm.sum(axis=1, keepdims=True)
    # Rows of classes with no video stay 0 rather than 0/0.
    norm = np.divide(cm, support, out=np.zeros(cm.shape, np.float64), where=support > 0)
    c = cm.shape[0]
    labelled = c <= MAX_LABELLED_CLASSES
    side = max(6.0, 0.22 * c + 3.0) if labelled else 10.0
    fig = Figure(figsize=(side, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if labelled:
        fontsize = 8 if c <= 30 else 6
        ax.set_xticks(range(c), labels=class_names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(c), labels=class_names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic.write_bytes(path, buf.getvalue())


def fuse_files(paths: list[str], weights, output_dir: str) -> dict:
    """Loads, fuses, reports; returns the fusion.json content."""
    if len(paths) < 2:
        raise fusion.ScoresError(f"--scores: fusion needs at least two score files, got {len(paths)}")
    loaded = [fusion.load_scores(p) for p in paths]
    fused = fusion.fuse(loaded, weights)
    w = fusion.normalize_weights(weights, len(loaded))
    names = fusion.row_names([s.stream for s in loaded], reserved=REPORT_KEYS)

    rows = {}
    for name, s in zip(names, loaded):
        rows[name] = metrics.summarize(s.scores, s.labels, s.num_classes)
    rows[fusion.TWO_STREAM] = metrics.summarize(fused.scores, fused.labels, fused.num_classes)
    for r in rows.values():
        r.pop("num_videos")  # the same for every row; reported once

    print(f"Late average fusion (paper Sect. 3): {fused.dataset}, split {fused.split}, "
          f"{fused.num_videos} videos, {fused.num_classes} classes")
    print("weights: " + ", ".join(f"{n} {x:.3f}" for n, x in zip(names, w)))
    print(format_table(rows))

    cm = metrics.confusion_matrix(metrics.predictions(fused.scores), fused.labels,
                                  fused.num_classes)
    png = os.path.join(output_dir, "confusion.png")
    plot_confusion(cm, fused.class_names, png,
                   f"{fused.dataset} {fused.split}: two-stream, "
                   f"top-1 {100 * rows[fusion.TWO_STREAM]['top1']:.1f} %")

    report = dict(rows)
    report.update(weights=[float(x) for x in w], num_videos=fused.num_videos, files=list(paths),
                  dataset=fused.dataset, split=fused.split)
    text = json.dumps(report, indent=2) + "\n"
    atomic.write_text(os.path.join(output_dir, "fusion.json"), text)
    print(f"wrote {os.path.join(output_dir, 'fusion.json')} and {png}")
    return report
