"""`mat_effnet.ops.quantize` computes in float32: its codes pinned against the float64 formulas.

The references below restate the float64 definitions the project used before
quantization was written once: half up (q = floor((clip(v, ±b) / b + 1) * 127.5
+ 0.5), NaN -> 0) and the frame folders' cvround (rint(255 (v + b) / 2b)) and
truncate (floor of the same). Every code the float32 implementation gives
differently is listed, and the list is pinned.
"""

import numpy as np
import pytest
import tensorflow as tf

from mat_effnet.ops import quantize

BOUNDS = (20.0, 15.0, 10.0, 8.0, 1.0, 0.3, 127.5, 3.7)

# (bound, rounding, value, float64 code, float32 code) of every value that
# changes code. None does: the float32 path checks its code against the
# float64 formula's edges.
EXPECTED_CHANGES: list = []


def reference(v, bound: float, rounding: str) -> np.ndarray:
    v = np.clip(np.nan_to_num(np.asarray(v, np.float64), nan=0.0), -bound, bound)
    if rounding == "half_up":
        q = np.floor((v / bound + 1.0) * 127.5 + 0.5)
    else:
        s = 255.0 * (v + bound) / (2.0 * bound)
        q = np.rint(s) if rounding == "cvround" else np.floor(s)
    return np.clip(q, 0, 255).astype(np.uint8)


def probe_values(bound: float) -> np.ndarray:
    """±bound, 0, -0, NaN, ±inf; every exact half step, whole step and their float32
    neighbours; and a dense random sweep over ±1.2 bound, float32."""
    step = 2.0 * bound / 255.0
    k = np.arange(-2, 258)
    edges = np.concatenate([(k + 0.5) * step - bound, k * step - bound]).astype(np.float32)
    near = np.concatenate([np.nextafter(edges, np.float32(np.inf)),
                           np.nextafter(edges, np.float32(-np.inf)), edges])
    rng = np.random.default_rng(int(bound * 1000))
    sweep = np.concatenate([rng.uniform(-1.2 * bound, 1.2 * bound, 300_000),
                            rng.normal(0.0, bound / 4, 100_000)])
    special = [bound, -bound, 0.0, -0.0, np.nan, np.inf, -np.inf, 2 * bound, -2 * bound]
    return np.concatenate([np.array(special), near, sweep]).astype(np.float32)


def test_float32_codes_against_the_float64_formulas():
    changed = []
    for bound in BOUNDS:
        v = probe_values(bound)
        for rounding in quantize.ROUNDINGS:
            want = reference(v, bound, rounding)
            got = quantize.quantize_flow(v, bound, rounding)
            assert isinstance(got, np.ndarray) and got.dtype == np.uint8
            changed += [(bound, rounding, float(v[i]), int(want[i]), int(got[i]))
                        for i in np.nonzero(want != got)[0]]
    assert changed == EXPECTED_CHANGES


def test_the_formula_alone_in_float32_would_move_codes():
    # Why the edges exist: the plain float32 formula lands values one level off
    # at half steps (so the pinned list above is not empty by accident).
    bound, v = 20.0, probe_values(20.0)
    s = (np.clip(np.nan_to_num(v), -bound, bound) / np.float32(bound) + np.float32(1)) \
        * np.float32(127.5)
    plain = np.clip(np.floor(s + np.float32(0.5)), 0, 255).astype(np.uint8)
    assert np.sum(plain != reference(v, bound, "half_up")) > 10


@pytest.mark.parametrize("rounding", quantize.ROUNDINGS)
def test_special_values(rounding):
    v = np.array([np.nan, np.inf, -np.inf, 20.0, -20.0, 0.0, 1e30, -1e30], np.float32)
    assert quantize.quantize_flow(v, 20.0, rounding).tolist() == \
        [128 if rounding != "truncate" else 127, 255, 0, 255, 0,
         128 if rounding != "truncate" else 127, 255, 0]


def test_half_steps_round_by_their_convention():
    # bound 127.5: s = v + 127.5 lands on the half steps 0.5, 1.5, ... For
    # cvround and truncate, 255 (v + b) / 2b is exact there; half up divides
    # by b first, and below zero that lands a hair under the half (as it did
    # in float64).
    v = np.array([-127.0, -126.0, 0.0, 1.0, 2.0, 3.0, 126.0], np.float32)
    assert quantize.quantize_flow(v, 127.5, "half_up").tolist() == [0, 1, 128, 129, 130, 131, 254]
    assert quantize.quantize_flow(v, 127.5, "cvround").tolist() == [0, 2, 128, 128, 130, 130, 254]
    assert quantize.quantize_flow(v, 127.5, "truncate").tolist() == [0, 1, 127, 128, 129, 130, 253]


@pytest.mark.parametrize("rounding", quantize.ROUNDINGS)
def test_tensors_in_a_graph_get_the_numpy_codes(rounding):
    """The export graph's path: keras.ops on TF tensors inside a tf.function."""
    v = probe_values(15.0)[:20_000]

    @tf.function
    def graph(x):
        return quantize.quantize_flow(x, 15.0, rounding)

    got = graph(tf.constant(v))
    assert got.dtype == tf.uint8
    np.testing.assert_array_equal(got.numpy(), quantize.quantize_flow(v, 15.0, rounding))
    back = quantize.dequantize_flow(got, 15.0, rounding)
    np.testing.assert_array_equal(back.numpy(), quantize.dequantize_flow(got.numpy(), 15.0,
                                                                         rounding))


@pytest.mark.parametrize("rounding", quantize.ROUNDINGS)
def test_dequantized_codes_are_the_float64_centres(rounding):
    q = np.arange(256, dtype=np.uint8)
    offset = 0.5 if rounding == "truncate" else 0.0
    want = ((q + offset) * (40.0 / 255.0) - 20.0).astype(np.float32)
    np.testing.assert_array_equal(quantize.dequantize_flow(q, 20.0, rounding), want)
    np.testing.assert_array_equal(
        quantize.quantize_flow(quantize.dequantize_flow(q, 20.0, rounding), 20.0, rounding), q)


def test_bad_rounding_is_named():
    with pytest.raises(ValueError, match="rounding=nearest"):
        quantize.quantize_flow(np.zeros(2), 20.0, "nearest")
