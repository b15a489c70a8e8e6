"""mat_effnet.benchmark: the arithmetic exactly, the document's structure at tiny sizes.

No timing is ever a pass/fail threshold here: only that every figure exists,
has a value, a unit, its settings and the machine, and that figures derived
from other figures follow from them. The Keras TV-L1 is replaced by OpenCV's
TV-L1 behind the same contract (`batch_tvl1` with ``last_stats``), so no XLA
compile runs here; data_prep's own tests cover the real one.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mat_effnet.training import config
from mat_effnet.benchmark import flow_figures, machine, prep_figures, report, runner, settings, step_figures
from mat_effnet.common.errors import MatEffNetError, bad_argument
from mat_effnet.benchmark import roofline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Peak FLOP/s arithmetic and the machine

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
    value, how = machine.cpu_flops_per_cycle(flags, vendor, family, model)
    assert value == expected
    assert how


def test_cpu_peak_flops_is_cores_times_clock_times_flops_per_cycle():
    assert machine.cpu_peak_flops(2, 2.5e9, 32) == 160e9
    assert machine.cpu_peak_flops(16, 3.0e9, 64) == 3.072e12
    with pytest.raises(MatEffNetError):
        machine.cpu_peak_flops(0, 2.5e9, 32)


def test_parse_cpuinfo_reads_model_flags_and_every_clock():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
            "model name\t: Intel(R) Xeon(R) Gold 6248\ncpu MHz\t\t: 2500.000\n"
            "flags\t\t: fpu sse2 avx avx2 fma avx512f\n\n"
            "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2600.500\n"
            "flags\t\t: fpu sse2\n")
    info = machine.parse_cpuinfo(text)
    assert info["model"] == "Intel(R) Xeon(R) Gold 6248"
    assert info["vendor"] == "GenuineIntel"
    assert (info["family"], info["model_number"]) == (6, 85)
    assert info["flags"] == {"fpu", "sse2", "avx", "avx2", "fma", "avx512f"}
    assert info["mhz"] == [2500.0, 2600.5]
    assert machine.parse_cpuinfo("")["model"] is None


def test_device_peak_for_a_cpu_machine():
    info = {"cpu_model": "Test CPU", "cpu_vendor": "GenuineIntel", "cpu_family": 6,
            "cpu_model_number": 85, "cpu_flags": ["sse2", "avx", "avx2", "fma"],
            "cores_for_peak": 4, "clock_mhz": 3000.0, "clock_source": "test", "gpus": []}
    peak = machine.device_peak(info)
    assert peak["flops"] == 4 * 3.0e9 * 32
    assert peak["flops_per_cycle"] == 32
    assert peak["precision"] == "fp32"
    assert "4 cores" in peak["how"] and "3000 MHz" in peak["how"]
    assert machine.device_peak(dict(info, clock_mhz=None))["flops"] is None
    label = machine.machine_label(dict(info, logical_cpus=8))
    assert label == "Test CPU (4 cores, 8 logical CPUs) / no GPU"


def test_gpu_peak_table_matches_specific_names_first():
    assert machine.gpu_peak_flops("NVIDIA H100 80GB HBM3")["fp32"] == 67.0e12
    assert machine.gpu_peak_flops("NVIDIA H100 PCIe")["fp32"] == 51.2e12
    assert machine.gpu_peak_flops("NVIDIA H200")["matched"] == "H200"
    assert machine.gpu_peak_flops("NVIDIA A100-SXM4-40GB")["tf32"] == 156.0e12
    assert machine.gpu_peak_flops("Tesla T4")["fp32"] == 8.1e12
    assert machine.gpu_peak_flops("Some Unknown Accelerator") is None


# ---------------------------------------------------------------------------
# Figures and outputs

def test_figure_shape_rate_and_rounding():
    fig = report.figure(3, "pairs/s", {"pairs": 2}, "machine x", seconds=0.5)
    assert fig == {"value": 3.0, "unit": "pairs/s", "settings": {"pairs": 2},
                   "machine": "machine x", "seconds": 0.5}
    assert report.figure(None, "s", {}, "m")["value"] is None
    with pytest.raises(MatEffNetError):
        report.figure(1, "", {}, "m")
    ctx = report.Context(work_dir="", machine="box")
    assert ctx.figure(1, "x", {"a": 1}, why="w") == {"value": 1.0, "unit": "x",
                                                     "settings": {"a": 1}, "machine": "box",
                                                     "why": "w"}
    assert report.rate(10, 2.0) == 5.0
    assert report.rate(1, 0.0) == pytest.approx(1e9)  # a zero duration is guarded, not a crash
    assert report.round_sig(123456, 3) == 123000
    assert report.round_sig(0.0012345, 2) == 0.0012
    assert report.round_sig(None) is None


def test_table_markdown_and_json(tmp_path):
    doc = {"machine_label": "box", "mode": "quick", "duration_s": 12.0, "errors": {"prep": "boom"},
           "figures": {
               "flow.a": report.figure(1234567.0, "FLOPs", {"frame_size": "40x32",
                                                            "implementation": "keras"}, "box"),
               "flow.b": report.figure(None, "pairs/s", {"batch_size": 8}, "box", why="no tvl1"),
           }}
    table = report.format_table(doc)
    assert "flow.a" in table and "1.230e+06" in table and "implementation=keras" in table
    assert "n/a" in table and "not measured: no tvl1" in table
    assert "prep: FAILED: boom" in table
    markdown = report.format_table(doc, markdown=True).splitlines()
    assert markdown[0] == "| figure | value | unit | settings |"
    assert markdown[2].startswith("| `flow.a` | 1.230e+06 | FLOPs | frame_size=40x32")
    assert len(markdown) == 4
    path = tmp_path / "out" / "bench.json"
    report.write_json(str(path), dict(doc, arr=np.arange(3), f=np.float32(0.5), s={"b", "a"}))
    back = json.loads(path.read_text())
    assert back["arr"] == [0, 1, 2] and back["f"] == 0.5 and back["s"] == ["a", "b"]
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temp file left


# ---------------------------------------------------------------------------
# Settings: defined once, flags derived, quick in one place

def test_setting_names_are_unique_and_every_field_has_help():
    owner = config.flat_fields(settings.BenchmarkSettings)  # raises on a repeated name
    assert owner["tvl1_pairs"] == "flow" and owner["image_size"] == "clip"
    assert owner["sections"] == "run" and owner["train_steps"] == "training"
    for section in dataclasses.fields(settings.BenchmarkSettings):
        for f in dataclasses.fields(section.default_factory):
            assert f.metadata.get("help"), f.name


def test_quick_settings_keep_the_figure_definitions():
    quick, full = settings.BenchmarkSettings.quick_run(), settings.BenchmarkSettings()
    assert quick.run.mode == "quick" and full.run.mode == "full"
    assert set(settings.QUICK) <= set(config.flat_fields(settings.BenchmarkSettings))
    for name in ("flow_height", "flow_width", "keras_batches", "image_size", "num_segments",
                 "flow_length", "test_segments", "long_seconds", "pipeline_short_side",
                 "pipeline_batch", "predict_seconds", "backbone"):
        assert quick.flat()[name] == full.flat()[name], name
    assert (full.flow.flow_height, full.flow.flow_width, full.clip.image_size) == (256, 340, 224)
    assert full.flow.keras_batches == (1, 8, 32)
    assert full.prep.long_seconds >= 300
    assert quick.training.train_steps < full.training.train_steps
    # Flags given explicitly win over the quick values.
    mixed = settings.BenchmarkSettings.quick_run(tvl1_pairs=7, seed=3)
    assert (mixed.flow.tvl1_pairs, mixed.run.seed, mixed.flow.dis_pairs) == (7, 3, 60)


def test_settings_validate_and_name_the_field():
    with pytest.raises(MatEffNetError, match=r"^sections=nope: unknown; known: flow, prep"):
        settings.BenchmarkSettings.from_flat(sections=("flow", "nope"))
    with pytest.raises(MatEffNetError, match=r"^keras_batches=1,x: expected integers"):
        settings.BenchmarkSettings.from_flat(keras_batches=("1", "x"))
    with pytest.raises(MatEffNetError, match=r"^tvl1_pairs=0: must be >= 1"):
        settings.BenchmarkSettings.from_flat(tvl1_pairs=0)
    with pytest.raises(MatEffNetError, match=r"^predict_flow_implementation=keras"):
        settings.BenchmarkSettings.from_flat(predict_flow="dis",
                                             predict_flow_implementation="keras")
    with pytest.raises(MatEffNetError, match=r"^nonsense=1: not a benchmark setting"):
        settings.BenchmarkSettings.from_flat(nonsense=1)
    # A list flag arrives as strings.
    assert settings.BenchmarkSettings.from_flat(keras_batches=("2", "4")).flow.keras_batches == (2, 4)


def test_flags_are_derived_from_the_settings():
    from absl import flags

    from mat_effnet.common import flagdefs

    fv = flags.FlagValues()
    names = flagdefs.define_flags(settings.BenchmarkSettings, flag_values=fv)
    assert set(names) == set(config.flat_fields(settings.BenchmarkSettings))
    fv(["prog", "--sections=flow,training", "--keras_batches=1,4", "--quick", "--seed=5",
        "--prep_flow=dis"])
    s = flagdefs.build(settings.BenchmarkSettings, flag_values=fv)
    assert s.run.sections == ("flow", "training") and s.run.quick and s.run.seed == 5
    assert s.flow.keras_batches == (1, 4) and s.prep.prep_flow == "dis"
    assert fv["output"].default == "benchmark.json"


def test_flow_choices_match_data_prep():
    from mat_effnet.ops import optical_flow as flow_lib

    assert settings.FLOW_ALGORITHMS == flow_lib.ALGORITHMS
    assert settings.FLOW_IMPLEMENTATIONS == flow_lib.IMPLEMENTATIONS
    assert tuple(runner.RUNS) == settings.SECTIONS


# ---------------------------------------------------------------------------
# The flow section

def _fake_batch_tvl1(params=None):
    """OpenCV's TV-L1 behind batch_tvl1's contract, 7 inner iterations per warp."""
    import cv2

    from mat_effnet.ops import tvl1

    solver = cv2.optflow.DualTVL1OpticalFlow_create()

    def fn(prev, nxt):
        out = np.stack([solver.calc(p, n, None) for p, n in zip(prev, nxt)])
        scales = len(tvl1.pyramid_sizes(prev.shape[1], prev.shape[2], tvl1.TVL1Params()))
        fn.last_stats = {"iterations": np.full((len(prev), scales, 5), 7)}
        return out.astype(np.float32)

    fn.last_stats = None
    return fn


TINY_FLOW = dict(flow_height=32, flow_width=40, tvl1_pairs=2, dis_pairs=3, flow_workers=2,
                 keras_batches=(1, 2), keras_pairs=2)

FLOW_FIGURES = [
    "flow.tvl1.pairs_per_s.1_worker", "flow.tvl1.pairs_per_s.all_cores",
    "flow.dis.pairs_per_s.1_worker", "flow.dis.pairs_per_s.all_cores",
    "flow.dis_over_tvl1.speed",
    "flow.tvl1_keras.pairs_per_s.batch_1", "flow.tvl1_keras.pairs_per_s.batch_2",
    "flow.tvl1_keras_over_opencv.speed",
    "flow.epe.tvl1", "flow.epe.tvl1_keras", "flow.epe.dis_ultrafast", "flow.epe.dis_fast",
    "flow.epe.dis_medium", "flow.tvl1_keras_vs_opencv.epe",
    "flow.tvl1.roofline.flops_per_pair", "flow.tvl1.roofline.bytes_per_pair",
    "flow.tvl1.roofline.iterations_per_warp", "flow.tvl1.roofline.h100_pairs_per_s",
]


def test_frames_are_the_known_flow_set_and_exact_flow_scores_zero():
    from data_prep import known_flow

    frames = flow_figures.Frames(32, 40, seed=0)
    assert len(frames) == len(known_flow.accuracy_set(32, 40, 0))
    assert frames.names[0].startswith("translation@")
    assert [len(frames.cycle(k, 7)) for k in (1, 5)] == [1, 5]
    assert frames.cycle(3, 8)[1] is frames.pairs[0]  # wraps around
    value, per = frames.epe_to_truth(frames.truth)
    assert value == 0.0 and set(per) == set(frames.names)
    shifted = [t + np.array([3.0, 4.0], np.float32) for t in frames.truth]
    assert frames.epe_to_truth(shifted)[0] == pytest.approx(5.0)


def test_flow_section_emits_its_figures(monkeypatch, tmp_path):
    from data_prep import known_flow
    from mat_effnet.ops import tvl1

    monkeypatch.setattr(tvl1, "batch_tvl1", _fake_batch_tvl1)
    ctx = report.Context(work_dir=str(tmp_path), machine="box", info={"gpus": []}, seed=0)
    s = settings.FlowSettings(**TINY_FLOW)
    f = flow_figures.measure(s, ctx)
    n = len(known_flow.accuracy_set(32, 40, 0))
    assert sorted(f) == sorted(FLOW_FIGURES)
    for name, fig in f.items():
        assert isinstance(fig["value"], float) and math.isfinite(fig["value"]), name
        assert fig["machine"] == "box"
    # Implementations are named.
    assert f["flow.tvl1.pairs_per_s.1_worker"]["settings"]["implementation"] == "opencv"
    keras = f["flow.tvl1_keras.pairs_per_s.batch_2"]["settings"]
    assert keras["implementation"] == "keras" and keras["batch_size"] == 2
    assert keras["pairs"] == 2 and keras["frame_size"] == "40x32"
    # At least the whole accuracy set is timed on one worker.
    assert f["flow.tvl1.pairs_per_s.1_worker"]["settings"]["pairs"] == n
    assert f["flow.tvl1.pairs_per_s.all_cores"]["settings"]["pairs"] == 4  # 2 per worker
    # The ratio is the best batch over OpenCV on all cores.
    best = max(f[f"flow.tvl1_keras.pairs_per_s.batch_{b}"]["value"] for b in (1, 2))
    assert f["flow.tvl1_keras_over_opencv.speed"]["value"] == pytest.approx(
        best / f["flow.tvl1.pairs_per_s.all_cores"]["value"])
    # The stand-in is OpenCV's TV-L1: the two implementations agree exactly.
    assert f["flow.tvl1_keras_vs_opencv.epe"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert f["flow.epe.tvl1_keras"]["value"] == pytest.approx(f["flow.epe.tvl1"]["value"])
    assert len(f["flow.epe.dis_fast"]["per_pair"]) == n
    # Roofline: the measured 7 iterations per warp priced by cost_per_pair.
    cost = roofline.cost_per_pair(32, 40, iterations={
        "mean_per_warp": [7.0] * len(tvl1.pyramid_sizes(32, 40, tvl1.TVL1Params()))})
    assert f["flow.tvl1.roofline.iterations_per_warp"]["value"] == 7.0
    assert f["flow.tvl1.roofline.flops_per_pair"]["value"] == pytest.approx(cost["measured"]["flops"])
    assert f["flow.tvl1.roofline.bytes_per_pair"]["worst_case"] == pytest.approx(
        cost["worst_case"]["bytes"])
    bound = f["flow.tvl1.roofline.h100_pairs_per_s"]
    assert bound["value"] == pytest.approx(1 / max(cost["measured"]["bytes"] / 3.35e12,
                                                   cost["measured"]["flops"] / 67e12))
    assert bound["settings"]["derived"].startswith("derived, not measured")


def test_flow_section_where_the_keras_tvl1_cannot_run_says_why(monkeypatch, tmp_path):
    from mat_effnet.ops import tvl1

    def refused(params=None):
        raise bad_argument("KERAS_BACKEND", "torch", "batch_tvl1 needs tensorflow or jax")

    monkeypatch.setattr(tvl1, "batch_tvl1", refused)
    ctx = report.Context(work_dir=str(tmp_path), machine="box", info={"gpus": []})
    f = flow_figures.measure(settings.FlowSettings(**dict(TINY_FLOW, flow_workers=1)), ctx)
    assert sorted(f) == sorted(FLOW_FIGURES)
    for name in ("flow.tvl1_keras.pairs_per_s.batch_1", "flow.tvl1_keras_over_opencv.speed",
                 "flow.epe.tvl1_keras", "flow.tvl1_keras_vs_opencv.epe"):
        assert f[name]["value"] is None, name
        assert f[name]["why"] == ("mat_effnet.ops.tvl1.batch_tvl1() failed: MatEffNetError: "
                                  "KERAS_BACKEND=torch: batch_tvl1 needs tensorflow or jax"), name
    # The roofline still prices the worst case: every iteration.
    worst = roofline.cost_per_pair(32, 40)["worst_case"]
    assert f["flow.tvl1.roofline.flops_per_pair"]["value"] == pytest.approx(worst["flops"])
    assert f["flow.tvl1.roofline.iterations_per_warp"]["value"] is None
    assert isinstance(f["flow.epe.dis_medium"]["value"], float)


def test_long_video_frames_count_and_size():
    frames = list(prep_figures.long_video_frames(2.2, fps=10, height=24, width=32, clip_seconds=1.0))
    assert len(frames) == 22
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for f in frames)


# ---------------------------------------------------------------------------
# The whole document at tiny sizes

TINY = dict(
    TINY_FLOW,
    prep_videos_per_class=1, prep_frames=4, prep_height=32, prep_width=40, prep_flow="tvl1",
    prep_short_side=32, prep_workers=2, long_seconds=1.0, long_height=32, long_width=40,
    short_seconds=0.4, pipeline_videos_per_class=1, pipeline_frames=6, pipeline_short_side=40,
    image_size=32, num_segments=2, flow_length=2, test_segments=3, pipeline_batch=2,
    pipeline_train_batches=1, pipeline_test_clips=2, pipeline_min_seconds=0.0,
    pipeline_rounds=1, pipeline_levers=False, pipeline_bound_clips=2,
    backbone="resnet18", train_batch=2, train_steps=1, train_small_size=40,
    train_small_flow_length=1, infer_clips=1, predict_seconds=0.4,
    predict_height=32, predict_width=40, predict_flow="dis", predict_short_side=40,
    at_scale=False)  # timed on its own below (test_prediction_at_scale_figures)

EXPECTED = FLOW_FIGURES + [
    "prep.videos_per_s.1_worker", "prep.mb_per_video_minute", "prep.speedup_2_workers",
    "prep.long_video.peak_rss",
    *[f"pipeline.{stream}.{mode}.{what}" for stream in ("spatial", "temporal")
      for mode in ("train", "test", "test10")
      for what in ("clips_per_s", "decode_bound_clips_per_s", "share_of_bound",
                   "clips_per_s_per_core", "cores_per_a100", "host_bytes_per_clip", "peak_rss")],
    "pipeline.spatial.train.read_bytes_per_clip", "pipeline.temporal.train.read_bytes_per_clip",
    "device.peak_flops",
    "train_step.spatial.clips_per_s", "train_step.temporal.clips_per_s",
    "training.spatial.images_per_s", "training.temporal.images_per_s",
    "training.spatial.fraction_of_peak", "training.temporal.fraction_of_peak",
    *[f"training.40px.{stream}.{what}" for stream in ("spatial", "temporal")
      for what in ("images_per_s", "fraction_of_peak")],
    "inference.two_stream.clips_per_s",
    "inference.predict.total_s", "inference.predict.decode_s", "inference.predict.flow_s",
    "inference.predict.jpeg_and_records_s", "inference.predict.models_s",
    "headline.spatial.input_over_train", "headline.temporal.input_over_train",
]


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory):
    from mat_effnet.ops import tvl1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tvl1, "batch_tvl1", _fake_batch_tvl1)
        work = tmp_path_factory.mktemp("bench")
        return runner.run_benchmark(settings.BenchmarkSettings.from_flat(**TINY), str(work))


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
    assert json.loads(report.to_json(tiny_doc))["figures"].keys() == figures.keys()
    assert tiny_doc["schema"] == report.SCHEMA


def test_machine_block_and_settings(tiny_doc):
    m = tiny_doc["machine"]
    assert m["cpu_model"] and m["logical_cpus"] >= 1 and m["physical_cores"] >= 1
    assert isinstance(m["gpus"], list)
    for lib in ("tensorflow", "keras", "opencv", "python", "numpy"):
        assert m["versions"][lib], lib
    assert tiny_doc["device_peak"]["how"]
    assert tiny_doc["mode"] == "full"
    assert tiny_doc["settings"]["flow"]["keras_batches"] == [1, 2]
    assert tiny_doc["settings"]["clip"]["backbone"] == "resnet18"
    assert set(tiny_doc["sections"]) == set(settings.SECTIONS)


def test_figures_record_their_settings(tiny_doc):
    f = tiny_doc["figures"]
    assert f["prep.videos_per_s.1_worker"]["settings"]["prep"]["flow"] == "tvl1"
    assert f["prep.videos_per_s.1_worker"]["settings"]["prep"]["flow_implementation"] == "opencv"
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
    small = f["training.40px.temporal.images_per_s"]
    assert small["settings"]["image_size"] == 40 and small["settings"]["channels"] == 2
    assert small["cpu_seconds"] > 0 and small["images_per_cpu_second"] > 0
    assert f["training.40px.spatial.fraction_of_peak"]["settings"]["forward_flops_per_image"] > (
        frac["settings"]["forward_flops_per_image"])
    head = f["headline.temporal.input_over_train"]
    assert head["value"] == pytest.approx(f["pipeline.temporal.train.clips_per_s"]["value"]
                                          / f["train_step.temporal.clips_per_s"]["value"])
    assert head["settings"]["same_sizes"] is True
    predict = f["inference.predict.total_s"]["settings"]
    assert predict["video_frames"] == 10 and predict["flow"] == "dis"
    assert predict["flow_implementation"] == "opencv"


def test_table_lists_every_figure(tiny_doc):
    table = report.format_table(tiny_doc)
    for name in EXPECTED:
        assert name in table
    assert len(report.format_table(tiny_doc, markdown=True).splitlines()) == len(EXPECTED) + 2


def test_input_over_train_skips_missing_figures():
    ctx = report.Context(work_dir="", machine="m")
    assert step_figures.input_over_train({}, ctx) == {}
    figs = {"pipeline.spatial.train.clips_per_s": report.figure(30.0, "clips/s", {}, "m"),
            "train_step.spatial.clips_per_s": report.figure(4.0, "clips/s", {}, "m")}
    assert step_figures.input_over_train(figs, ctx)["headline.spatial.input_over_train"]["value"] == 7.5


def test_cli_rejects_unknown_sections(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--sections=nope",
                           f"--output={tmp_path / 'b.json'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "mat-effnet-benchmark: error: --sections=nope: unknown; known: flow, prep, pipeline, "
        "training, inference")
    assert not (tmp_path / "b.json").exists()


def test_pipeline_figures_follow_from_each_other(tiny_doc):
    f = tiny_doc["figures"]
    for stream in ("spatial", "temporal"):
        for mode in ("train", "test", "test10"):
            key = f"pipeline.{stream}.{mode}"
            rate = f[f"{key}.clips_per_s"]
            bound = f[f"{key}.decode_bound_clips_per_s"]["value"]
            assert f[f"{key}.share_of_bound"]["value"] == pytest.approx(rate["value"] / bound)
            cores = rate["settings"]["cores"]
            per_core = f[f"{key}.clips_per_s_per_core"]["value"]
            assert per_core == pytest.approx(rate["value"] / cores)
            a100 = f[f"{key}.cores_per_a100"]
            assert a100["value"] == pytest.approx(a100["a100_clips_per_s"] / per_core)
            assert "EfficientNet" in a100["source"]
            # Clips stay uint8 until the model: 1 byte per value.
            crops = rate["settings"]["crops"]
            segments = rate["settings"]["segments"]
            channels = 3 if stream == "spatial" else 2 * 2
            host = f[f"{key}.host_bytes_per_clip"]
            assert host["clip_dtype"] == "uint8"
            assert host["value"] == pytest.approx(crops * segments * 32 * 32 * channels)
        # Version 2 reads a header and the clip's frames, version 1 the whole record.
        read = f[f"pipeline.{stream}.train.read_bytes_per_clip"]
        assert read["settings"]["schema_version"] == 2
        assert 0 < read["value"] < read["version1"]


# ---------------------------------------------------------------------------
# Prediction at scale, at tiny sizes

def test_prediction_at_scale_figures(tmp_path):
    import keras

    from mat_effnet.modeling import models
    from mat_effnet.benchmark import inference as bench_inference

    s = settings.InferenceSettings(
        predict_height=32, predict_width=40, predict_flow="dis", predict_short_side=40,
        scale_videos=2, scale_video_seconds=0.4, scale_workers=1, scale_cli_videos=1,
        timeline_short_s=0.4, timeline_long_s=1.6, timeline_window_s=0.4,
        timeline_stride_s=0.2)
    keras.utils.set_random_seed(0)
    kw = dict(num_segments=None, image_size=32, flow_length=2, backbone="resnet18")
    spatial = models.build_stream(3, "spatial", **kw)
    temporal = models.build_stream(3, "temporal", **kw)
    ctx = report.Context(work_dir=str(tmp_path), machine="test")
    f = bench_inference.scale_figures(s, spatial, temporal, ctx)
    assert set(f) == {
        "inference.many.videos_per_s", "inference.many.cli_loop_videos_per_s",
        "inference.many.speedup_over_cli_loop", "inference.many.per_video_over_flow_and_models",
        *[f"inference.timeline.{n}.{w}" for n in ("short", "long")
          for w in ("frames_per_s", "peak_rss_mb", "window_latency_s")]}
    assert all(v["value"] > 0 for v in f.values())
    assert f["inference.many.videos_per_s"]["failed"] == 0
    speedup = f["inference.many.speedup_over_cli_loop"]["value"]
    assert speedup == pytest.approx(
        f["inference.many.videos_per_s"]["value"] / f["inference.many.cli_loop_videos_per_s"]
        ["value"], rel=1e-6)
    short, long = (f[f"inference.timeline.{n}.peak_rss_mb"] for n in ("short", "long"))
    # 0.4-s windows at 25 fps: 10 frames held at most, at any length.
    assert short["max_frames_held"] == long["max_frames_held"] == 10
    # 40 frames (0 .. 1.56 s): 6 full windows, starts 0 .. 1.0 s, and the last, shorter one.
    assert f["inference.timeline.long.frames_per_s"]["windows"] == 7
