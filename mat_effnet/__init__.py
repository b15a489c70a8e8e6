"""mat-effnet: MAT-EffNet (Zhou et al., Multimedia Systems 2022) in TensorFlow/Keras.

The library, in rooms that import only downwards:

    common      errors, checks, atomic writes, machine faults, CLI wrapper, flags
    ops         decoding, grey, resize, OpenCV flows, TV-L1 (keras.ops), quantization
    records     the on-disk schema, shard index, metadata, integrity
    data        sampling, clips, the tf.data pipelines
    encoding    frames -> records, batched flow
    modeling    backbones, layers, the stream spec, saved-model identity, models
    training    config, step, fit and custom loops, distribution
    evaluation  the test protocol, metrics, fusion, report
    serving     one video, many, streaming, timeline, VideoClassifier, export
    webapp      mat-effnet-serve: the page and the JSON API
    benchmark   measurements of all of the above (may import `data_prep` too)

The front door is `VideoClassifier` (``from mat_effnet import VideoClassifier``),
a trained two-stream model to load, predict with and export. It is resolved
lazily, and submodules are imported explicitly
(``from mat_effnet.modeling import models``), so that importing the package
never starts TensorFlow.
"""

__version__ = "0.1.0"
__all__ = ["VideoClassifier", "Prediction"]


def __getattr__(name):
    if name in ("VideoClassifier", "Prediction"):
        from mat_effnet.serving import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'mat_effnet' has no attribute {name!r}")
