"""Each stream of MAT-EffNet as a TFLite file, builtin ops only.

A stream (paper Sect. 3.3: the backbone per segment, Fc 512, two-head
attention over the segments, softmax) takes any number of segments in Keras;
TFLite wants one static shape, so the file takes one clip of a fixed
``(1, segments, S, S, C)`` uint8 (0..255, as the pipeline's clips) and
returns its softmax. Two variants: float32, and dynamic-range int8 (weights
stored as int8, activations float: `tf.lite.Optimize.DEFAULT` with no
representative data).

Only TFLite's builtin ops are allowed (``TFLITE_BUILTINS``): a file with
select TF ("Flex") ops needs the Flex delegate, which ``ai_edge_litert``
2.1.x fails to load, while ``tf.lite.Interpreter`` loads it anyway. So
`flex_ops` reads the op list of a written file, and a file that has any is
refused here rather than shipped.
"""

from __future__ import annotations

import os

from mat_effnet.common.errors import MatEffNetError

VARIANTS = ("float32", "int8")


class TFLiteError(MatEffNetError):
    """A stream that cannot be converted with builtin ops only."""


def convert(model, segments: int = 25, variant: str = "float32") -> bytes:
    """The ``.tflite`` bytes of one stream model at ``segments`` segments."""
    import tensorflow as tf

    from mat_effnet.evaluation import protocol

    spec = protocol.stream_spec(model)
    channels = int(model.inputs[0].shape[-1])
    shape = [1, segments, *spec.image_size, channels]

    @tf.function(autograph=False, input_signature=[tf.TensorSpec(shape, tf.uint8, name="clip")])
    def probabilities(clip):
        return {"probabilities": tf.cast(model(tf.cast(clip, tf.float32), training=False),
                                         tf.float32)}

    from tensorflow.python.framework import convert_to_constants

    # Keras 3 variables are not frozen by the converter itself (the file would
    # keep VAR_HANDLE ops reading uninitialised variables): fold them first.
    frozen = convert_to_constants.convert_variables_to_constants_v2(
        probabilities.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    # Builtins only: Keras's litert export turns on SELECT_TF_OPS by default.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant != "float32":
        raise TFLiteError(f"variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    try:
        data = converter.convert()
    except Exception as e:  # the converter raises ConverterError with the op list
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TFLiteError(f"{model.name}: cannot convert with builtin TFLite ops only: "
                          f"{first}") from None
    found = flex_ops(data)
    if found:
        raise TFLiteError(f"{model.name}: the converted file needs select TF ops "
                          f"{', '.join(found)}")
    return data


def _interpreter(data: bytes):
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():  # its deprecation notice, on every construction
        warnings.simplefilter("ignore", UserWarning)
        return tf.lite.Interpreter(model_content=data)


def op_names(data: bytes) -> list[str]:
    """The op names a ``.tflite`` file uses (custom and Flex ops by their custom name)."""
    import tensorflow as tf

    interpreter = _interpreter(data)
    return sorted({d["op_name"] for d in interpreter._get_ops_details()})  # noqa: SLF001


def flex_ops(data: bytes) -> list[str]:
    """The select-TF ops in a ``.tflite`` file (empty: builtins only).

    Flex ops are custom ops whose name starts with ``Flex``; the
    interpreter lists them as such even when it could run them.
    """
    return [name for name in op_names(data) if name.startswith("Flex")]


def run(data: bytes, clip) -> "np.ndarray":  # noqa: F821
    """Softmax of one (1, segments, S, S, C) uint8 clip through a ``.tflite`` file."""
    import numpy as np
    import tensorflow as tf

    interpreter = _interpreter(data)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], np.asarray(clip, np.uint8))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


def write_streams(model_paths: dict, output_dir: str, segments: int = 25) -> dict:
    """``<stream>.<variant>.tflite`` for each stream; returns {file: size in bytes}."""
    from mat_effnet.common import atomic
    from mat_effnet.evaluation import protocol

    sizes = {}
    for stream, path in model_paths.items():
        model = protocol.load_model(path)
        for variant in VARIANTS:
            data = convert(model, segments, variant)
            name = f"{stream}.{variant}.tflite"
            atomic.write_bytes(os.path.join(output_dir, name), data)
            sizes[name] = len(data)
    return sizes


# ---------------------------------------------------------------------------
# TV-L1 itself, for a client that computes the flow on the device

#: The flow file's inputs. Feed them by name (`run_flow` does, through the
#: signature runner), never by position: ``get_input_details()`` is not in
#: argument order (the previous frame came second), and swapped frames solve
#: next -> prev, about minus the flow: that was the 4.76 px "error" of the
#: issue's probe on a 3 px translation, not any op of TFLite.
FLOW_INPUTS = ("frame0_prev", "frame1_next")


def convert_flow(height: int, width: int) -> bytes:
    """`mat_effnet.ops.tvl1`'s graph for one (1, height, width) uint8 pair, builtins only.

    Outputs ``flow`` (1, H, W, 2) float32. The same graph as the export's;
    unfused, it differs from the XLA-compiled one by rounding order only.
    """
    import tempfile

    import tensorflow as tf

    from mat_effnet.ops import tvl1

    params = tvl1.TVL1Params()
    spec = [tf.TensorSpec((1, height, width), tf.uint8, name=n) for n in FLOW_INPUTS]

    def graph(frame0_prev, frame1_next):
        return {"flow": tvl1.flow_graph(frame0_prev, frame1_next, params)}

    module = tf.Module()
    module.flow = tf.function(graph, input_signature=spec, autograph=False)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=module.flow.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        data = converter.convert()
    found = flex_ops(data)
    if found:
        raise TFLiteError(f"TV-L1 at {height}x{width} needs select TF ops {', '.join(found)}")
    return data


def run_flow(data: bytes, prev, nxt) -> "np.ndarray":  # noqa: F821
    """(H, W, 2) flow of one uint8 (H, W) pair through a `convert_flow` file."""
    import numpy as np

    interpreter = _interpreter(data)
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner()
    out = runner(**dict(zip(FLOW_INPUTS, (np.asarray(prev, np.uint8)[None],
                                          np.asarray(nxt, np.uint8)[None]))))
    return np.asarray(out["flow"], np.float32)[0]
