"""The flagfiles of Tables 2-4 (experiments/configs) carry the Sect. 4.2 setup."""

import glob
import importlib.util
import os
import re

import pytest
from absl import flags

from mat_effnet.common import flagdefs
from mat_effnet.training import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.cfg")))
NAME = re.compile(r"^(ucf101|hmdb51|kinetics400)_(resnet18|resnet34|resnet50|efficientnet_b0)_"
                  r"(attention|noattention)_(spatial|temporal)\.cfg$")
# Sect. 4.2: input resolution per backbone.
PAPER_IMAGE_SIZE = {"resnet18": 112, "resnet34": 168, "resnet50": 224, "efficientnet_b0": 224}


def _parse(path):
    """Parses a flagfile with throwaway FlagValues holding the train binary's flags.

    The flags are derived from mat_effnet.training.config.TrainConfig exactly as
    mat-effnet-train derives them, so an unknown flag or a bad value in a
    flagfile raises here.
    """
    fv = flags.FlagValues()
    flagdefs.define_flags(config.TrainConfig, flag_values=fv)
    fv(["train", f"--flagfile={path}"])
    return fv


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_36_configs_all_named_by_the_scheme():
    names = [os.path.basename(p) for p in CONFIGS]
    assert len(names) == 36
    assert all(NAME.match(n) for n in names), [n for n in names if not NAME.match(n)]
    # 2 datasets x 4 backbones x 2 attention x 2 streams, plus Kinetics' 2 x 2.
    assert sum(n.startswith(("ucf101_", "hmdb51_")) for n in names) == 32
    assert sorted(n for n in names if n.startswith("kinetics400_")) == [
        "kinetics400_efficientnet_b0_attention_spatial.cfg",
        "kinetics400_efficientnet_b0_attention_temporal.cfg",
        "kinetics400_efficientnet_b0_noattention_spatial.cfg",
        "kinetics400_efficientnet_b0_noattention_temporal.cfg",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_has_the_papers_setup(path):
    dataset, backbone, attention, stream = NAME.match(os.path.basename(path)).groups()
    fv = _parse(path)
    assert fv.stream == stream
    assert fv.backbone == backbone
    assert fv.attention is (attention == "attention")
    assert fv.image_size == PAPER_IMAGE_SIZE[backbone]
    assert (fv.batch_size, fv.learning_rate, fv.dropout, fv.epochs) == (16, 0.01, 0.2, 50)
    # ImageNet initialisation (Sect. 4.2) except Kinetics, trained from scratch (Sect. 4.4).
    assert fv.weights == ("none" if dataset == "kinetics400" else "imagenet")
    assert fv.data_dir.startswith(f"data/{dataset}")
    assert fv.model_dir.endswith("/" + os.path.basename(path)[:-4])
    assert not os.path.isabs(fv.data_dir) and not os.path.isabs(fv.model_dir)
    # Spatial flagfiles leave the flow length alone (its default is unused).
    assert (fv.flow_length == 10) if stream == "temporal" else not fv["flow_length"].present


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_values_not_in_the_paper_are_marked(path):
    lines = _lines(path)
    assert lines[0].startswith("# Table ")
    for flag in ("--momentum=", "--weight_decay=", "--num_segments=", "--flow_length="):
        for i, line in enumerate(lines):
            if line.startswith(flag):
                assert lines[i - 1].startswith("# not in the paper"), (flag, lines[i - 1])


@pytest.mark.parametrize("name, first_line", [
    ("ucf101_efficientnet_b0_attention_spatial.cfg",
     '# Table 2 (UCF101), row "EfficientNet-B0 + Multi-head attention (MAT-EffNet)": '
     "spatial 90.2 % (two-stream 94.5 % after fusion with the temporal stream)"),
    ("ucf101_resnet18_noattention_temporal.cfg",
     '# Table 2 (UCF101), row "ResNet-18": temporal 79.1 % '
     "(two-stream 81.9 % after fusion with the spatial stream)"),
    ("hmdb51_resnet34_attention_temporal.cfg",
     '# Table 3 (HMDB51), row "ResNet-34 + Multi-head attention": temporal 44.2 % '
     "(two-stream 49.9 % after fusion with the spatial stream)"),
    ("hmdb51_efficientnet_b0_attention_spatial.cfg",
     '# Table 3 (HMDB51), row "MAT-EffNet": spatial 59.3 % '
     "(two-stream 70.9 % after fusion with the temporal stream)"),
    ("kinetics400_efficientnet_b0_attention_temporal.cfg",
     '# Table 4 (Kinetics-400 validation), row "MAT-EffNet": two-stream top-1 72.6 %, '
     "top-5 90.8 % (the paper reports no temporal-stream number)"),
])
def test_header_cites_the_table_row(name, first_line):
    assert _lines(os.path.join(CONFIG_DIR, name))[0] == first_line


def test_committed_configs_match_the_generator():
    spec = importlib.util.spec_from_file_location("generate", os.path.join(CONFIG_DIR, "generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    rendered = generate.all_configs()
    assert sorted(rendered) == sorted(os.path.basename(p) for p in CONFIGS)
    for name, text in rendered.items():
        with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as f:
            assert f.read() == text, f"{name} is stale: re-run experiments/configs/generate.py"
