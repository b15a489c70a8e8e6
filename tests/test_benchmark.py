"""mat-effnet-benchmark: the arithmetic exactly, the document's structure at tiny sizes.

No timing is ever a pass/fail threshold here: only that every figure exists
and has a value, a unit, its settings and the machine.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import benchmark
from mat_effnet import benchmarking as B

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Peak FLOP/s arithmetic
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("flags, vendor, family, model, expected", [
    ({"sse2", "avx", "avx2", "fma", "avx512f"}, "GenuineIntel", 6, 85, 64),
    ({"sse2", "avx", "avx2", "fma", "avx512f"}, "AuthenticAMD", 0x19, 0x11, 32),  # Zen 4
    ({"sse2", "avx", "avx2", "fma", "avx512f"}, "AuthenticAMD", 0x1A, 0x02, 64),  # Zen 5
    ({"sse2", "avx", "avx2", "fma"}, "GenuineIntel", 6, 158, 32),
    ({"sse2", "avx", "avx2", "fma"}, "AuthenticAMD", 0x17, 0x31, 32),  # Zen 2
    ({"sse2", "avx", "avx2", "fma"}, "AuthenticAMD", 0x17, 0x01, 16),  # Zen 1
    ({"sse2", "avx"}, "GenuineIntel", 6, 42, 16),
    ({"sse2"}, None, None, None, 8),
    (set(), None, None, None, 2),
])
def test_cpu_flops_per_cycle_from_flags(flags, vendor, family, model, expected):
    value, how = B.cpu_flops_per_cycle(flags, vendor, family, model)
    assert value == expected
    assert how


def test_cpu_peak_flops_is_cores_times_clock_times_flops_per_cycle():
    assert B.cpu_peak_flops(2, 2.5e9, 32) == 160e9
    assert B.cpu_peak_flops(16, 3.0e9, 64) == 3.072e12
    with pytest.raises(ValueError):
        B.cpu_peak_flops(0, 2.5e9, 32)


def test_parse_cpuinfo_reads_model_flags_and_every_clock():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
            "model name\t: Intel(R) Xeon(R) Gold 6248\ncpu MHz\t\t: 2500.000\n"
            "flags\t\t: fpu sse2 avx avx2 fma avx512f\n\n"
            "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2600.500\n"
            "flags\t\t: fpu sse2\n")
    info = B.parse_cpuinfo(text)
    assert info["model"] == "Intel(R) Xeon(R) Gold 6248"
    assert info["vendor"] == "GenuineIntel"
    assert (info["family"], info["model_number"]) == (6, 85)
    assert info["flags"] == {"fpu", "sse2", "avx", "avx2", "fma", "avx512f"}
    assert info["mhz"] == [2500.0, 2600.5]


def test_device_peak_for_a_cpu_machine():
    info = {"cpu_model": "Test CPU", "cpu_vendor": "GenuineIntel", "cpu_family": 6,
            "cpu_model_number": 85, "cpu_flags": ["sse2", "avx", "avx2", "fma"],
            "cores_for_peak": 4, "clock_mhz": 3000.0, "clock_source": "test", "gpus": []}
    peak = B.device_peak(info)
    assert peak["flops"] == 4 * 3.0e9 * 32
    assert peak["flops_per_cycle"] == 32
    assert peak["precision"] == "fp32"
    assert "4 cores" in peak["how"] and "3000 MHz" in peak["how"]
    assert B.device_peak(dict(info, clock_mhz=None))["flops"] is None


def test_gpu_peak_table_matches_specific_names_first():
    assert B.gpu_peak_flops("NVIDIA H100 80GB HBM3")["fp32"] == 67.0e12
    assert B.gpu_peak_flops("NVIDIA H100 PCIe")["fp32"] == 51.2e12
    assert B.gpu_peak_flops("NVIDIA H200")["matched"] == "H200"
    assert B.gpu_peak_flops("NVIDIA A100-SXM4-40GB")["tf32"] == 156.0e12
    assert B.gpu_peak_flops("Tesla T4")["fp32"] == 8.1e12
    assert B.gpu_peak_flops("Some Unknown Accelerator") is None


# ---------------------------------------------------------------------------
# End-point error
# ---------------------------------------------------------------------------

def test_endpoint_error_of_identical_flows_is_zero():
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(12, 16, 2)).astype(np.float32)
    assert B.endpoint_error(flow, flow) == 0.0


def test_endpoint_error_of_a_constant_offset_is_its_length():
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(2, 12, 16, 2))
    shifted = flow + np.array([3.0, 4.0])
    assert B.endpoint_error(shifted, flow) == pytest.approx(5.0)
    assert B.endpoint_error(flow, shifted) == pytest.approx(5.0)


def test_endpoint_error_mask_and_shapes():
    a = np.zeros((4, 4, 2))
    b = np.zeros((4, 4, 2))
    b[0, 0] = (6.0, 8.0)  # one pixel off by 10
    assert B.endpoint_error(a, b) == pytest.approx(10.0 / 16)
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    assert B.endpoint_error(a, b, mask) == pytest.approx(5.0)
    assert math.isnan(B.endpoint_error(a, b, np.zeros((4, 4), bool)))
    with pytest.raises(ValueError):
        B.endpoint_error(a, np.zeros((4, 5, 2)))
    with pytest.raises(ValueError):
        B.endpoint_error(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
    assert B.flow_magnitude(np.array([[[3.0, 4.0]]]))[0, 0] == 5.0


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def test_figure_shape_and_validation():
    fig = B.figure(3, "pairs/s", {"pairs": 2}, "machine x", seconds=0.5)
    assert fig == {"value": 3.0, "unit": "pairs/s", "settings": {"pairs": 2},
                   "machine": "machine x", "seconds": 0.5}
    assert B.figure(None, "s", {}, "m")["value"] is None
    with pytest.raises(ValueError):
        B.figure(1, "", {}, "m")
    assert B.rate(10, 2.0) == 5.0
    assert B.round_sig(123456, 3) == 123000
    assert B.round_sig(0.0012345, 2) == 0.0012


def test_motion_pairs_cover_every_class_and_move():
    pairs = B.motion_pairs(6, height=48, width=64, seed=0)
    assert len(pairs) == 6
    for prev, nxt in pairs:
        assert prev.shape == nxt.shape == (48, 64) and prev.dtype == np.uint8
        assert np.abs(prev.astype(int) - nxt.astype(int)).max() > 40  # an object moved


def test_long_video_frames_count_and_size():
    frames = list(B.long_video_frames(2.2, fps=10, height=24, width=32, clip_seconds=1.0))
    assert len(frames) == 22
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for f in frames)


# ---------------------------------------------------------------------------
# The whole document at tiny sizes
# ---------------------------------------------------------------------------

TINY = dict(
    mode="test", flow_height=32, flow_width=40, tvl1_pairs=2, dis_pairs=3, flow_workers=2,
    prep_videos_per_class=1, prep_frames=4, prep_height=32, prep_width=40, prep_flow="tvl1",
    prep_short_side=32, prep_workers=2, long_seconds=1.0, long_height=32, long_width=40,
    short_seconds=0.4, pipeline_videos_per_class=1, pipeline_frames=6, pipeline_short_side=40,
    image_size=32, num_segments=2, flow_length=2, test_segments=3, pipeline_batch=2,
    pipeline_train_batches=1, pipeline_test_clips=2, pipeline_min_seconds=0.0,
    backbone="resnet18", train_batch=2, train_steps=1, infer_clips=1, predict_seconds=0.4,
    predict_height=32, predict_width=40, predict_flow="dis", predict_short_side=40)

EXPECTED = [
    "flow.tvl1.pairs_per_s.1_worker", "flow.tvl1.pairs_per_s.all_cores",
    "flow.dis.pairs_per_s.1_worker", "flow.dis.pairs_per_s.all_cores",
    "flow.dis_vs_tvl1.epe", "flow.dis_over_tvl1.speed",
    "prep.videos_per_s.1_worker", "prep.mb_per_video_minute", "prep.speedup_2_workers",
    "prep.long_video.peak_rss",
    "pipeline.spatial.train.clips_per_s", "pipeline.spatial.test.clips_per_s",
    "pipeline.temporal.train.clips_per_s", "pipeline.temporal.test.clips_per_s",
    "device.peak_flops",
    "train_step.spatial.clips_per_s", "train_step.temporal.clips_per_s",
    "training.spatial.images_per_s", "training.temporal.images_per_s",
    "training.spatial.fraction_of_peak", "training.temporal.fraction_of_peak",
    "inference.two_stream.clips_per_s",
    "inference.predict.total_s", "inference.predict.decode_s", "inference.predict.flow_s",
    "inference.predict.jpeg_and_records_s", "inference.predict.models_s",
    "headline.spatial.input_over_train", "headline.temporal.input_over_train",
]


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    return benchmark.run_benchmark(benchmark.Settings(**TINY), str(work))


def test_every_figure_has_value_unit_settings_and_machine(tiny_doc):
    assert tiny_doc["errors"] == {}, tiny_doc["errors"]
    figures = tiny_doc["figures"]
    assert sorted(figures) == sorted(EXPECTED)
    for name, fig in figures.items():
        assert isinstance(fig["value"], float) and math.isfinite(fig["value"]), name
        assert fig["value"] >= 0, name
        assert isinstance(fig["unit"], str) and fig["unit"], name
        assert isinstance(fig["settings"], dict) and fig["settings"], name
        assert fig["machine"] == tiny_doc["machine_label"], name
    assert json.loads(json.dumps(tiny_doc, default=str))["figures"].keys() == figures.keys()


def test_machine_block(tiny_doc):
    m = tiny_doc["machine"]
    assert m["cpu_model"] and m["logical_cpus"] >= 1 and m["physical_cores"] >= 1
    assert isinstance(m["gpus"], list)
    for lib in ("tensorflow", "keras", "opencv", "python", "numpy"):
        assert m["versions"][lib], lib
    assert tiny_doc["device_peak"]["how"]
    assert tiny_doc["settings"]["mode"] == "test"
    assert set(tiny_doc["sections"]) == set(benchmark.SECTIONS)


def test_figures_record_their_settings(tiny_doc):
    f = tiny_doc["figures"]
    assert f["flow.tvl1.pairs_per_s.1_worker"]["settings"]["frame_size"] == "40x32"
    assert f["flow.tvl1.pairs_per_s.all_cores"]["settings"]["workers"] == 2
    assert f["flow.tvl1.pairs_per_s.all_cores"]["settings"]["pairs"] == 4  # 2 per worker
    assert f["flow.dis_vs_tvl1.epe"]["settings"]["pairs"] == 2
    assert f["prep.videos_per_s.1_worker"]["settings"]["prep"]["flow"] == "tvl1"
    assert f["prep.videos_per_s.1_worker"]["settings"]["stored_size"] == "40x32"  # W x H
    assert f["pipeline.spatial.train.clips_per_s"]["settings"]["stored_size"] == "54x40"
    long = f["prep.long_video.peak_rss"]
    assert long["unit"] == "MiB"
    assert long["settings"]["video_frames"] == 25 and long["settings"]["video_seconds"] == 1.0
    assert long["frames_prepared"] == 25
    assert long["value"] >= long["baseline_rss_mib"] > 0
    assert f["pipeline.temporal.train.clips_per_s"]["settings"]["image_size"] == 32
    assert f["pipeline.spatial.test.clips_per_s"]["settings"]["segments"] == 3
    step = f["train_step.spatial.clips_per_s"]
    # images/s is clips/s times the segments per clip.
    assert f["training.spatial.images_per_s"]["value"] == pytest.approx(step["value"] * 2)
    frac = f["training.spatial.fraction_of_peak"]
    assert frac["settings"]["forward_flops_per_image"] > 0
    assert frac["value"] == pytest.approx(frac["achieved_flops"] / tiny_doc["device_peak"]["flops"])
    assert frac["achieved_flops"] == pytest.approx(
        f["training.spatial.images_per_s"]["value"] * 3 * frac["settings"]["forward_flops_per_image"])
    head = f["headline.temporal.input_over_train"]
    assert head["value"] == pytest.approx(f["pipeline.temporal.train.clips_per_s"]["value"]
                                          / f["train_step.temporal.clips_per_s"]["value"])
    assert head["settings"]["same_sizes"] is True
    predict = f["inference.predict.total_s"]["settings"]
    assert predict["video_frames"] == 10 and predict["flow"] == "dis"


def test_table_and_json_output(tiny_doc, tmp_path):
    table = benchmark.format_table(tiny_doc)
    for name in EXPECTED:
        assert name in table
    markdown = benchmark.format_table(tiny_doc, markdown=True)
    assert markdown.splitlines()[0].startswith("| figure |")
    assert len(markdown.splitlines()) == len(EXPECTED) + 2
    path = tmp_path / "out" / "bench.json"
    benchmark.write_json(str(path), tiny_doc)
    assert json.loads(path.read_text())["schema"] == benchmark.SCHEMA


def test_derive_skips_missing_figures():
    assert benchmark.derive({}, "m") == {}


def test_quick_settings_keep_the_figure_definitions():
    quick, full = benchmark.quick_settings(), benchmark.Settings()
    assert quick.mode == "quick" and full.mode == "full"
    for name in ("flow_height", "flow_width", "image_size", "num_segments", "flow_length",
                 "test_segments", "long_seconds", "pipeline_short_side", "predict_seconds"):
        assert getattr(quick, name) == getattr(full, name), name
    assert (full.flow_height, full.flow_width, full.image_size) == (256, 340, 224)
    assert full.long_seconds >= 300
    assert quick.train_steps < full.train_steps


def test_run_benchmark_rejects_unknown_sections(tmp_path):
    with pytest.raises(ValueError, match="unknown sections"):
        benchmark.run_benchmark(benchmark.Settings(), str(tmp_path), sections=("nope",))


def test_cli_rejects_unknown_sections(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--sections=nope",
                           f"--output={tmp_path / 'b.json'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "--sections" in proc.stderr and "nope" in proc.stderr
    assert not (tmp_path / "b.json").exists()
