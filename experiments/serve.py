"""``mat-effnet-serve``: a trained model behind a local web page and a JSON API.

    mat-effnet-serve --spatial_model=runs/spatial/model.keras \\
        --temporal_model=runs/temporal/model.keras [--port=8000]
    mat-effnet-serve --export_dir=exported/   # a mat-effnet-export folder

Loads the models once, warms them up on a generated clip at each
``--warmup_sizes`` (a TV-L1 model compiles its flow for that working size),
then listens on 127.0.0.1:``--port`` and prints the address. The page at
``/`` takes a video file; programs ``POST /v1/predict`` (see
`mat_effnet.webapp.app`). Needs the ``[serve]`` extra
(``pip install -e .[serve]``); ``--help`` does not.
"""

from __future__ import annotations

import logging
import sys
import time

from absl import flags

from mat_effnet.common import cli, flagdefs
from mat_effnet.common.errors import MatEffNetError, bad_argument
from mat_effnet.webapp.serve_settings import ServeSettings, require_extra

FLAGS = flags.FLAGS
flags.DEFINE_string("spatial_model", None, "Spatial stream model (.keras).")
flags.DEFINE_string("temporal_model", None, "Temporal stream model (.keras).")
flags.DEFINE_string("export_dir", None, "A mat-effnet-export folder, instead of the .keras files.")
flags.DEFINE_integer("num_segments", 25, "Positions sampled per video.")
flags.DEFINE_list("fusion_weights", ["1", "1"], "Spatial,temporal weights of the late fusion.")
flagdefs.define_flags(ServeSettings)

PROG = "mat-effnet-serve"


def _classifier():
    from mat_effnet.serving.classifier import VideoClassifier

    if FLAGS.export_dir and (FLAGS.spatial_model or FLAGS.temporal_model):
        raise MatEffNetError("give --export_dir or the .keras files (--spatial_model, "
                             "--temporal_model), not both")
    try:
        weights = [float(w) for w in FLAGS.fusion_weights]
    except ValueError:
        raise bad_argument("fusion_weights", ",".join(FLAGS.fusion_weights),
                           "expected two numbers") from None
    if FLAGS.export_dir:
        return VideoClassifier.load(FLAGS.export_dir, num_segments=FLAGS.num_segments,
                                    fusion_weights=weights)
    if not FLAGS.spatial_model and not FLAGS.temporal_model:
        raise MatEffNetError("give --spatial_model, --temporal_model (or both), or --export_dir")
    return VideoClassifier.load(spatial=FLAGS.spatial_model, temporal=FLAGS.temporal_model,
                                num_segments=FLAGS.num_segments, fusion_weights=weights)


def main(argv):
    del argv
    require_extra()
    settings = flagdefs.build(ServeSettings)
    from mat_effnet.webapp import app as web
    from mat_effnet.webapp import jobs

    if not settings.is_loopback:
        print(f"{PROG}: warning: listening on {settings.host}: anyone who can reach this "
              "machine can send it videos (there is no authentication)", file=sys.stderr,
              flush=True)
    web.exit_on_signals()
    t0 = time.perf_counter()
    clf = _classifier()
    loaded = time.perf_counter() - t0
    sock = web.bind(settings.host, settings.port)  # a taken port fails before the warm-up
    worker = jobs.Worker(clf, max_queue=settings.max_queue, keep_jobs=settings.keep_jobs)
    try:
        warm = worker.warm_up(settings.frame_sizes(), settings.window_s)
        worker.start()
        ready = time.perf_counter() - t0
        about = {"models": repr(clf), "load_s": round(loaded, 3), "warm_up_s": round(warm, 3),
                 "ready_s": round(ready, 3)}
        application = web.create_app(worker, settings, about)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        sock.listen(128)  # from here on, connections wait for the server, not refused
        print(f"{PROG}: ready on http://{shown}:{port}/ ({clf!r}; loaded in {loaded:.1f} s, "
              f"warmed up in {warm:.1f} s)", flush=True)
        web.serve(application, sock)
    finally:
        worker.stop()
        sock.close()
    return 0


def run():
    cli.run(main, PROG, logging.WARNING)


if __name__ == "__main__":
    run()
