"""Each stream of MAT-EffNet as an ONNX graph, for ONNX Runtime.

A file holds one stream (paper Sect. 3.3: the backbone per segment, Fc,
multi-head attention over the tokens, softmax): it takes the clip exactly as
the ``.keras`` model takes it, float32 ``(N, segments, S, S, C)`` in 0..255
(`mat_effnet.data.clips.eval_clip_from_frames`'s views, one row per view),
and returns the softmax ``(N, classes)``. N and the number of segments stay
free when the model leaves them free. The late average fusion of Sect. 3.3
is two weighted sums a client does itself (`fuse`, as
`mat_effnet.serving.predict_video.predict_video` does).

How the graph is made.  The stream is traced at its input signature, its
variables folded into constants (`convert_variables_to_constants_v2`), and
the frozen GraphDef converted by tf2onnx. Folding first is what leaves one
graph input: converting the Keras model or its tf.function directly
(Keras's ``format="onnx"``, ``tf2onnx.convert.from_function``) turns the
backbone's captured Normalization constants into extra graph inputs that a
session then demands as feeds. tf2onnx's GraphDef path carries on past an
op it cannot convert, so the result is checked here: every node must be an
op of the standard ONNX domain, and the file must have exactly one input.

What a file says about itself is in its ``metadata_props``, string keys
with JSON values (`STREAM_KEYS`; `read_metadata` reads them back): the
stream, class names, the preparation its clips need (short side, flow,
bound, JPEG quality), the model's identity
(`mat_effnet.modeling.model_identity.identity`), the test segments, the
input's and output's names, and the opset.

The flow.  `mat_effnet.ops.tvl1`'s graph (TV-L1 as OpenCV's
DualTVL1OpticalFlow, Zach et al. 2007 / Sanchez et al. 2013) converts too:
its keras.ops while loops become ONNX ``Loop`` nodes when the function is
frozen without lowering its control flow (lowered to v1 Enter/Exit/Merge
frames, tf2onnx cannot rebuild the nested loops: "Graph has cycles").
`convert_flow` writes it for one (1, H, W) uint8 pair of a static size,
since the pyramid is built from static sizes (`FLOW_KEYS`). ONNX Runtime
runs its loops one iteration at a time, each a sequence of small kernels,
which is slow on a CPU against the XLA-compiled Keras TV-L1
(docs/deployment-onnx.md has the figures).
"""

from __future__ import annotations

import json
import logging
import os

from mat_effnet.common.errors import MatEffNetError

#: The ONNX opset the files are written in (ONNX Runtime 1.16+ runs it).
OPSET = 17
INPUT_NAME = "clip"
OUTPUT_NAME = "probabilities"
FILES = {"spatial": "spatial.onnx", "temporal": "temporal.onnx"}
INSTALL = "pip install -e .[onnx]"
FLOW_FILE = "flow.onnx"
#: The flow file's inputs (previous frame, next frame) and output.
FLOW_INPUTS = ("prev", "next")
FLOW_OUTPUT = "flow"
#: The ``metadata_props`` keys of a stream file and of the flow file, each
#: holding JSON text.
STREAM_KEYS = ("mat_effnet.format", "mat_effnet.stream", "mat_effnet.class_names",
               "mat_effnet.preparation", "mat_effnet.model", "mat_effnet.test_segments",
               "mat_effnet.input", "mat_effnet.output", "mat_effnet.opset")
FLOW_KEYS = ("mat_effnet.format", "mat_effnet.flow", "mat_effnet.input", "mat_effnet.output",
             "mat_effnet.opset")
FORMAT = {"stream": {"name": "mat-effnet-onnx-stream", "version": 1},
          "flow": {"name": "mat-effnet-onnx-flow", "version": 1}}


class OnnxError(MatEffNetError):
    """A stream that cannot be converted, or ONNX packages that are missing."""


def require():
    """Imports onnx, tf2onnx and onnxruntime; one line naming the fix if one is missing."""
    missing = []
    modules = {}
    for name in ("onnx", "tf2onnx", "onnxruntime"):
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxError(f"the ONNX export needs {', '.join(missing)}, not installed: "
                        f"install them with `{INSTALL}`")
    return modules["onnx"], modules["tf2onnx"], modules["onnxruntime"]


def _all_nodes(graph):
    """The nodes of ``graph`` and of the subgraphs of its Loop/If/Scan nodes."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def foreign_ops(proto) -> list[str]:
    """The ops of an ONNX model that are not standard ONNX (empty: all standard).

    tf2onnx keeps an op it cannot convert under its TensorFlow name; ONNX
    Runtime would then refuse to load the file.
    """
    import onnx

    return sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}"
                   for n in _all_nodes(proto.graph)
                   if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)})


def convert_function(function, input_specs, output_names, what: str, opset: int = OPSET):
    """An ONNX ModelProto of a tf.function with static ``input_specs``, its
    variables folded into constants.

    ``input_specs``: tf.TensorSpecs, whose names become the ONNX inputs'
    names; ``output_names``: the ONNX outputs' names, in the order of the
    function's (flattened, by sorted key) outputs. ``what`` names the graph
    in errors.
    """
    _, tf2onnx, _ = require()
    from tensorflow.python.framework import convert_to_constants
    from tensorflow.python.util import deprecation

    concrete = function.get_concrete_function(*input_specs)
    # Loops stay functional While ops, which tf2onnx turns into ONNX Loops.
    frozen = convert_to_constants.convert_variables_to_constants_v2(
        concrete, lower_control_flow=False, aggressive_inlining=True)
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    rename = dict(zip(inputs, [s.name for s in input_specs]))
    rename.update(zip(outputs, output_names))
    # tf2onnx logs each pass at INFO (thousands of lines for the flow); what
    # matters is checked below on the result.
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # and it calls TF1 freezing functions, each with a deprecation notice.
        with deprecation.silence():
            proto, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(), name=what, input_names=inputs,
                output_names=outputs, opset=opset, tensors_to_rename=rename)
    except Exception as e:  # tf2onnx raises bare exceptions with the TF op's name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxError(f"{what}: tf2onnx cannot convert it: {first}") from None
    finally:
        logger.setLevel(level)
    found = foreign_ops(proto)
    if found:
        raise OnnxError(f"{what}: ops with no ONNX conversion: {', '.join(found)}")
    if len(proto.graph.input) != len(input_specs):
        raise OnnxError(f"{what}: the ONNX graph has inputs "
                        f"{[i.name for i in proto.graph.input]}, expected "
                        f"{[s.name for s in input_specs]}")
    return proto


def convert_stream(model, properties: dict, opset: int = OPSET):
    """The ONNX ModelProto of one stream model, ``properties`` in its metadata.

    ``properties``: the `STREAM_KEYS` entries other than format, input,
    output and opset (which are filled in here), as JSON-able values.
    """
    import tensorflow as tf

    shape = list(model.inputs[0].shape)
    dtype = tf.as_dtype(model.inputs[0].dtype)
    spec = tf.TensorSpec(shape, dtype, name=INPUT_NAME)

    @tf.function(autograph=False)
    def probabilities(clip):
        return {OUTPUT_NAME: tf.cast(model(clip, training=False), tf.float32)}

    proto = convert_function(probabilities, [spec], [OUTPUT_NAME], model.name, opset)
    values = dict(properties)
    values.update({
        "mat_effnet.format": FORMAT["stream"],
        "mat_effnet.input": {"name": INPUT_NAME, "shape": shape, "dtype": dtype.name,
                             "values": "0..255, the clip of mat_effnet.data.clips"},
        "mat_effnet.output": {"name": OUTPUT_NAME, "shape": [None, model.outputs[0].shape[-1]],
                              "dtype": "float32", "values": "softmax"},
        "mat_effnet.opset": opset,
    })
    _set_metadata(proto, STREAM_KEYS, values,
                  f"MAT-EffNet {values.get('mat_effnet.stream', '')} stream: {INPUT_NAME} "
                  f"(N, segments, S, S, C) float32 0..255 -> {OUTPUT_NAME} (N, classes) softmax")
    return proto


def convert_flow(height: int, width: int, opset: int = OPSET):
    """The ONNX ModelProto of `mat_effnet.ops.tvl1` for one (1, H, W) uint8 pair.

    Inputs `FLOW_INPUTS` (grey levels, the previous frame first), output
    ``flow`` (1, H, W, 2) float32: (dx, dy) in pixels from prev to next.
    The graph is `tvl1.flow_graph`, the one inside the SavedModel export.
    """
    import dataclasses

    import tensorflow as tf

    from mat_effnet.ops import tvl1

    params = tvl1.TVL1Params().validate()
    specs = [tf.TensorSpec((1, height, width), tf.uint8, name=n) for n in FLOW_INPUTS]

    @tf.function(autograph=False)
    def flow(prev, nxt):
        return {FLOW_OUTPUT: tvl1.flow_graph(prev, nxt, params)}

    proto = convert_function(flow, specs, [FLOW_OUTPUT], f"TV-L1 at {height}x{width}", opset)
    _set_metadata(proto, FLOW_KEYS, {
        "mat_effnet.format": FORMAT["flow"],
        "mat_effnet.flow": {"algorithm": "tvl1", "graph": "mat_effnet.ops.tvl1.flow_graph",
                            "params": dataclasses.asdict(params), "size": [height, width]},
        "mat_effnet.input": {"names": list(FLOW_INPUTS), "shape": [1, height, width],
                             "dtype": "uint8", "values": "grey levels, previous frame first"},
        "mat_effnet.output": {"name": FLOW_OUTPUT, "shape": [1, height, width, 2],
                              "dtype": "float32", "values": "(dx, dy) pixels, prev to next"},
        "mat_effnet.opset": opset,
    }, f"TV-L1 optical flow at {height}x{width}: {FLOW_INPUTS[0]}, {FLOW_INPUTS[1]} "
       f"(1, H, W) uint8 -> {FLOW_OUTPUT} (1, H, W, 2) float32")
    return proto


def _set_metadata(proto, keys, values: dict, doc: str) -> None:
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ValueError(f"unknown ONNX metadata keys {unknown}")
    del proto.metadata_props[:]
    for key in keys:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(values.get(key), sort_keys=True)
    proto.producer_name = "mat-effnet"
    proto.doc_string = doc


def read_metadata(source) -> dict:
    """The ``mat_effnet.*`` metadata of an ONNX file (path, bytes or ModelProto),
    decoded, keyed without the prefix (`STREAM_KEYS` or `FLOW_KEYS`)."""
    import onnx

    if isinstance(source, (str, os.PathLike)):
        proto = onnx.load(os.fspath(source), load_external_data=False)
    elif isinstance(source, bytes):
        proto = onnx.load_from_string(source)
    else:
        proto = source
    props = {p.key: p.value for p in proto.metadata_props}
    kind = {FORMAT[k]["name"]: k for k in FORMAT}.get(
        json.loads(props.get("mat_effnet.format", "{}")).get("name"))
    if kind is None:
        raise OnnxError(f"{source if isinstance(source, str) else 'the ONNX model'}: "
                        "no mat_effnet.format in its metadata_props (not a mat-effnet export)")
    out = {}
    for key in STREAM_KEYS if kind == "stream" else FLOW_KEYS:
        if key not in props:
            raise OnnxError(f"{source if isinstance(source, str) else 'the ONNX model'}: "
                            f"no {key} in its metadata_props")
        out[key.split(".", 1)[1]] = json.loads(props[key])
    return out


def for_export(serving, metadata: dict, opset: int = OPSET, flow: bool = True) -> dict:
    """``{file name: bytes}`` of an export, and ``metadata["onnx"]``.

    ``serving`` and ``metadata`` as `mat_effnet.serving.saved_model_export.build`
    returns them: the stream files carry the same class names, preparation,
    identities and test segments as the SavedModel's metadata. With ``flow``,
    also `FLOW_FILE`, TV-L1 at the export's first working size (frames of
    another size are resized to it for the flow, as the SavedModel does).
    """
    require()
    files = {}
    for stream, name in FILES.items():
        part = getattr(serving, stream)
        proto = convert_stream(part.predictor.model, {
            "mat_effnet.stream": stream,
            "mat_effnet.class_names": metadata["class_names"],
            "mat_effnet.preparation": metadata["preparation"][stream],
            "mat_effnet.model": metadata["models"][stream],
            "mat_effnet.test_segments": metadata["test_segments"][stream],
        }, opset)
        files[name] = proto.SerializeToString()
    metadata["onnx"] = {"opset": opset, "files": dict(FILES), "input": INPUT_NAME,
                        "output": OUTPUT_NAME}
    if flow:
        height, width = serving.flow.sizes[0]
        files[FLOW_FILE] = convert_flow(height, width, opset).SerializeToString()
        metadata["onnx"]["flow"] = {"file": FLOW_FILE, "size": [height, width],
                                    "inputs": list(FLOW_INPUTS), "output": FLOW_OUTPUT}
    return files


def write_files(directory: str, files: dict) -> None:
    """Writes ``{file name: bytes}`` into ``directory``, each file atomically."""
    from mat_effnet.common import atomic

    for name, data in files.items():
        atomic.write_bytes(os.path.join(directory, name), data)


# ---------------------------------------------------------------------------
# Running the files (what a client does; the tests check it against Keras)

def session(source):
    """An ONNX Runtime session on the CPU provider, from a path or bytes."""
    _, _, ort = require()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initializers, per load
    return ort.InferenceSession(source if isinstance(source, bytes) else os.fspath(source),
                                options, providers=["CPUExecutionProvider"])


def run(sess, clips) -> "np.ndarray":  # noqa: F821
    """Softmax of a clip batch (N, segments, S, S, C), any numeric dtype, 0..255."""
    import numpy as np

    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(clips, np.float32)})[0]


def stream_scores(sess, clips) -> "np.ndarray":  # noqa: F821
    """One video's scores: each chunk's clip (views, segments, S, S, C) through
    the file, its views averaged, then the chunks averaged (as
    `mat_effnet.serving.predict_video.stream_scores`)."""
    import numpy as np

    return np.mean([run(sess, clip).mean(axis=0) for clip in clips], axis=0)


def run_flow(sess, prev, nxt) -> "np.ndarray":  # noqa: F821
    """(H, W, 2) flow of one uint8 (H, W) grey pair through a `convert_flow` file."""
    import numpy as np

    feeds = dict(zip(FLOW_INPUTS, (np.asarray(prev, np.uint8)[None],
                                   np.asarray(nxt, np.uint8)[None])))
    return sess.run([FLOW_OUTPUT], feeds)[0][0]


def fuse(spatial, temporal, weights=(1.0, 1.0)) -> "np.ndarray":  # noqa: F821
    """The late average fusion of the two streams' scores (paper Sect. 3.3)."""
    import numpy as np

    from mat_effnet.evaluation.fusion import normalize_weights

    ws, wt = normalize_weights([float(w) for w in weights], 2)
    return ws * np.asarray(spatial) + wt * np.asarray(temporal)
