"""The GPU check (`mat_effnet.benchmark.device`) runs under JAX with TensorFlow absent.

The device machine has no TensorFlow, so the run here is a subprocess with
``KERAS_BACKEND=jax`` whose ``import tensorflow`` fails (a meta-path hook;
``sys.modules["tensorflow"] = None`` would not do: Keras reads a present key
as "TensorFlow is loaded"). ``--backbone=resnet18`` keeps the tiny run's
train-step compiles short; the planner's budget logic is tested in-process
with a fake clock. ``jax`` is a test dependency.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import import_block

from mat_effnet.benchmark import device, device_measure as dm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The device machine has no TensorFlow.
NO_TF = import_block.hook_source("tensorflow") + r"""
import runpy
sys.argv = ["mat_effnet.benchmark.device"] + sys.argv[1:]
runpy.run_module("mat_effnet.benchmark.device", run_name="__main__", alter_sys=True)
"""

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="jax is not installed (a test dependency)")


def _run_device(tmp_path, *args, timeout=600):
    out = tmp_path / "device.json"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", NO_TF, "--tiny", f"--output={out}", *args],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return r, json.loads(out.read_text()) if out.exists() else None, time.monotonic() - start


@needs_jax
def test_tiny_run_without_tensorflow_measures_every_section(tmp_path):
    r, doc, _ = _run_device(tmp_path, "--backbone=resnet18")
    assert r.returncode == 0, r.stderr[-3000:]
    assert doc["tensorflow_imported"] is False
    assert doc["device"]["keras_backend"] == "jax" and doc["device"]["device_kind"]
    assert {"jax", "keras", "numpy"} <= set(doc["device"]["versions"])
    assert doc["complete"] and not doc["skipped"] and not doc["errors"]
    figs = doc["figures"]
    assert list(figs) == doc["plan"]  # written in plan order, every one of them
    assert doc["plan"] == ["tvl1.b1.pairs_per_s", "tvl1.b2.pairs_per_s",
                           "train.spatial.float32.b2.images_per_s",
                           "train.temporal.mixed_bfloat16.b2.images_per_s",
                           "predict.clip.latency_s"]
    assert {f["section"] for f in figs.values()} == {"tvl1", "train", "predict"}
    for name, f in figs.items():
        assert f["value"] > 0, name
        assert f["settings"] and f["machine"].startswith(doc["device"]["device_kind"])
    for b in (1, 2):
        f = figs[f"tvl1.b{b}.pairs_per_s"]
        it = f["iterations"]
        assert f["settings"]["batch_size"] == b and f["settings"]["height"] == 32
        assert 1 <= it["min_per_pair"] <= it["mean_per_pair"] <= it["max_per_pair"]
        assert it["max_per_pair"] <= it["worst_case_per_pair"]
        assert len(it["mean_per_warp_by_scale"]) == 4  # 32x40: levels 32, 26, 21, 17
        assert f["epe_px"] < 0.5  # the known-flow mix is solved, not just timed
    for name in ("train.spatial.float32.b2.images_per_s",
                 "train.temporal.mixed_bfloat16.b2.images_per_s"):
        f = figs[name]
        assert f["loss_finite"] and f["last_loss"] > 0
        assert f["fraction_of_peak"] is None  # a CPU has no entry in the peak table
        fwd = dm.forward_flops_per_image("resnet18", 32, f["settings"]["channels"])
        assert f["achieved_flops"] == pytest.approx(f["value"] * 3 * fwd)
    assert figs["train.temporal.mixed_bfloat16.b2.images_per_s"]["settings"]["channels"] == 2
    p = figs["predict.clip.latency_s"]
    assert p["first_call_s"] > p["value"]  # the first call compiles
    assert p["same_scores"] and p["score_sum"] == pytest.approx(1.0, abs=1e-5)
    assert p["pairs"] == 2 and p["frames"] == 4  # T = 4, L = 1, N = 2: fields 0 and 2
    # Without TensorFlow there is no JPEG round trip, and the figure says so.
    assert p["jpeg_round_trip"] is False and "TensorFlow" in p["jpeg_round_trip_why"]


@needs_jax
def test_budget_skips_what_does_not_fit_and_says_why(tmp_path):
    # 15 s: the first TV-L1 figure's tiny prior (10 s) fits after the imports;
    # the train step's (20 s) never does.
    r, doc, _ = _run_device(tmp_path, "--backbone=resnet18", "--budget_s=15")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not doc["complete"] and doc["budget_s"] == 15
    later = [n for n in doc["plan"] if not n.startswith("tvl1.")]
    assert later and set(later) <= set(doc["skipped"])
    for name in doc["skipped"]:
        f = doc["figures"][name]
        assert f["value"] is None and f["skipped"] and f["why"].startswith("budget: ")
        assert f["estimate_s"] > 0


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _item(clock, name, kind, work, fixed, per_work, fail=False):
    def run():
        clock.t += fixed + per_work * work
        if fail:
            raise MemoryError("out of device memory")
        return {"value": 1.0, "seconds": per_work * work}
    return device.Planned(name, kind, work, {"work": work}, run)


def test_plan_estimates_from_its_kind_and_skips_what_would_pass_the_budget():
    clock, figs = _Clock(), {}
    plan = [_item(clock, "a1", "tvl1", 1, fixed=5, per_work=1),       # 6 s
            _item(clock, "t16", "train", 16, fixed=30, per_work=1),   # 46 s
            _item(clock, "a8", "tvl1", 8, fixed=5, per_work=1),       # 13 s: est 5 + 8
            _item(clock, "t64", "train", 64, fixed=30, per_work=1),   # est 30 + 64 > left
            _item(clock, "a2", "tvl1", 2, fixed=5, per_work=1)]       # est 5 + 2: fits
    out = device.run_plan(plan, budget_s=80, tiny=True,
                          on_figure=lambda n, f: figs.__setitem__(n, f), clock=clock)
    assert out == {"skipped": ["t64"], "errors": {}}
    assert figs["a8"]["estimate_s"] == pytest.approx(5 + 8)
    assert figs["t16"]["estimate_s"] == device.PRIOR_S["train"][1]
    assert figs["t64"]["estimate_s"] == pytest.approx(30 + 64)
    assert figs["t64"]["value"] is None and "budget" in figs["t64"]["why"]
    assert clock.t == pytest.approx(6 + 46 + 13 + 7)
    assert list(figs) == ["a1", "t16", "a8", "t64", "a2"]


def test_plan_records_a_failed_figure_and_goes_on():
    clock, figs = _Clock(), {}
    plan = [_item(clock, "t16", "train", 16, 1, 0.1, fail=True),
            _item(clock, "a1", "tvl1", 1, 1, 0.1)]
    out = device.run_plan(plan, None, True, lambda n, f: figs.__setitem__(n, f), clock=clock)
    assert out["errors"] == {"t16": "MemoryError: out of device memory"}
    assert figs["t16"]["value"] is None and figs["a1"]["value"] == 1.0


def test_tiny_settings_and_validation():
    s = device.DeviceSettings(**device.TINY)
    assert s.tvl1_batches == (1, 2) and s.image_size <= min(s.tvl1_height, s.tvl1_width)
    plan = device.build_plan(s, "cpu")
    assert [p.kind for p in plan] == ["tvl1", "tvl1", "train", "train", "predict"]
    full = device.build_plan(device.DeviceSettings(), "NVIDIA H200")
    assert [p.name for p in full][:2] == ["tvl1.b1.pairs_per_s", "tvl1.b8.pairs_per_s"]
    assert sum(p.kind == "train" for p in full) == 8 and full[-1].name.endswith(".b64.images_per_s")
    with pytest.raises(Exception, match="train_configs"):
        device.DeviceSettings(train_configs=("spatial:float16",))
    with pytest.raises(Exception, match="image_size"):
        device.DeviceSettings(tvl1_height=32, tvl1_width=40)  # 224 cannot be cropped from it


def test_flops_and_peaks():
    assert dm.forward_flops_per_image("efficientnet_b0", 224, 3) == pytest.approx(0.78e9)
    # The 20-channel stem adds 17 x 3^2 x 32 x 112^2 multiply-adds.
    assert dm.forward_flops_per_image("efficientnet_b0", 224, 20) == pytest.approx(
        0.78e9 + 2 * 17 * 9 * 32 * 112 ** 2)
    assert dm.forward_flops_per_image("efficientnet_b0", 112, 3) == pytest.approx(0.78e9 / 4)
    assert dm.forward_flops_per_image("resnet101", 224, 3) is None
    assert dm.peak_flops("NVIDIA H200", "mixed_bfloat16")["flops"] == 989.4e12
    h100 = dm.peak_flops("NVIDIA H100 80GB HBM3", "float32")
    assert h100["flops"] == 67.0e12 and h100["tf32_flops"] == 494.7e12
    assert dm.peak_flops("Tesla T4", "mixed_bfloat16")["flops"] is None
    assert dm.peak_flops("cpu", "float32")["flops"] is None


def test_restated_bound_is_preps():
    from mat_effnet.encoding.encode import EncodeSettings

    assert dm.FLOW_BOUND == EncodeSettings().flow_bound


def test_clip_frames_pan_one_pixel_per_frame():
    frames = dm.clip_frames(4, 32, 40, seed=0)
    assert frames.shape == (4, 32, 40, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1][:, 1:], frames[0][:, :-1])
    assert frames.std() > 10  # textured, so the flow has something to follow
