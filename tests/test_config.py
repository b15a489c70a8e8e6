"""mat_effnet.training.config: one definition of every training setting, and its flags."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from mat_effnet.common import flagdefs
from mat_effnet.training import config
from mat_effnet.common.errors import MatEffNetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
    return config.TrainConfig.from_flat(**{"stream": "temporal", "data_dir": "d",
                                           "model_dir": "m", **kw})


def test_from_flat_puts_each_setting_in_its_section():
    cfg = _cfg(batch_size=8, image_size=112, jit_compile=True, backbone="resnet18")
    assert cfg.optim.batch_size == 8 and cfg.data.image_size == 112
    assert cfg.runtime.jit_compile is True and cfg.model.backbone == "resnet18"
    # Defaults come from the one definition (Sect. 4.2 and TSN's choices).
    assert (cfg.optim.learning_rate, cfg.optim.momentum, cfg.optim.weight_decay) == (
        1e-2, 0.9, 5e-4)
    assert (cfg.data.num_segments, cfg.data.flow_length, cfg.model.dropout) == (3, 10, 0.2)


def test_every_field_name_is_unique_across_sections():
    owner = config.flat_fields()
    total = sum(len(dataclasses.fields(s)) for s in
                (config.DataConfig, config.ModelConfig, config.OptimConfig, config.RuntimeConfig))
    assert len(owner) == total
    assert owner["batch_size"] == "optim" and owner["data_service"] == "data"


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "batch_size=0: must be >= 1"),
    ({"stream": "depth"}, "stream='depth': expected one of spatial, temporal"),
    ({"lr_decay_epochs": ("a",)}, "lr_decay_epochs=a: expected integers"),
    ({"dropout": 1.0}, r"dropout=1.0: must be in \[0, 1\)"),
    ({"strategy": "multi_worker", "loop": "fit"}, "loop='fit': does not work"),
    ({"data_service": "host:5050"}, "data_service=host:5050: expected PROTOCOL://"),
    ({"image_size": 0}, "image_size=0: must be >= 1"),
    ({"no_such_setting": 1}, "no_such_setting=1: not a training setting"),
])
def test_bad_values_are_refused_once_naming_the_field(kw, message):
    with pytest.raises(MatEffNetError, match=message):
        _cfg(**kw)


def test_normalised_values():
    cfg = _cfg(weights="none", validation_split="", lr_decay_epochs=("5", "7"))
    assert cfg.model.weights is None and cfg.data.validation_split is None
    assert cfg.optim.lr_decay_epochs == (5, 7)


def test_image_size_defaults_to_the_papers_size_per_backbone():
    # Sect. 4.2: 112 for ResNet-18, 168 for ResNet-34, 224 otherwise.
    assert _cfg(backbone="resnet18").image_size() == 112
    assert _cfg(backbone="resnet34").image_size() == 168
    assert _cfg().image_size() == 224


def test_config_reads_the_backbone_table_without_starting_keras():
    code = ("import sys; from mat_effnet.training import config; "
            "c = config.TrainConfig.from_flat(stream='spatial', data_dir='d', model_dir='m', "
            "backbone='resnet34'); "
            "print(c.image_size(), config.BACKBONES == config.backbones.BACKBONES, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    assert out == ["168", "True", "[]"]
    assert _cfg(backbone="resnet18", image_size=64).image_size() == 64


def test_stream_spec_of_a_config():
    cfg = _cfg(stream="temporal", backbone="resnet18", flow_length=4, num_segments=5,
               attention=False, dropout=0.5)
    meta = {"classes": ["a", "b"], "num_classes": 2, "name": "toy", "schema_version": 2,
            "settings": {"flow": "tvl1", "flow_bound": 15.0, "chunk_frames": 9}}
    spec = cfg.stream_spec(2, meta)
    # Any segment count at evaluation; the K of training is kept.
    assert (spec.stream, spec.backbone, spec.attention, spec.flow_length) == (
        "temporal", "resnet18", False, 4)
    assert (spec.image_size, spec.num_segments, spec.train_segments) == ((112, 112), None, 5)
    assert (spec.class_names, spec.dataset) == (("a", "b"), "toy")
    assert spec.preparation == {"flow": "tvl1", "flow_bound": 15.0,
                                "flow_implementation": "opencv", "schema_version": 2}
    assert cfg.stream_spec(3).class_names is None
    # The spec is validated by itself: a class count the data cannot have.
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        cfg.stream_spec(1)


def test_json_round_trip_and_old_flat_files():
    cfg = _cfg(batch_size=4, lr_decay_epochs=(2, 3), clip_norm=5.0)
    text = json.dumps(cfg.to_dict())
    assert config.TrainConfig.from_dict(json.loads(text)) == cfg
    # train_config.json of runs before the nested config was flat.
    old = dict(cfg.flat(), num_classes=5, classes=["a"], replicas=1)
    assert config.TrainConfig.from_dict(json.loads(json.dumps(old))) == cfg
    assert cfg.replace(batch_size=2).optim.batch_size == 2 and cfg.optim.batch_size == 4


def test_uses_custom_loop():
    assert _cfg(strategy="multi_worker").uses_custom_loop()
    assert _cfg(jit_compile=True).uses_custom_loop(2)
    assert not _cfg(jit_compile=True).uses_custom_loop(1)
    assert not _cfg(loop="fit", jit_compile=True).uses_custom_loop(2)


def test_flags_are_derived_from_the_fields():
    fv = flags.FlagValues()
    names = flagdefs.define_flags(config.TrainConfig, flag_values=fv)
    assert sorted(names) == sorted(config.flat_fields())
    fv(["train", "--stream=spatial", "--data_dir=d", "--model_dir=m", "--nomultiscale",
        "--lr_decay_epochs=3,9", "--backbone=resnet34", "--batch_size=4"])
    # Same default and help text as the field: defined once.
    field = {f.name: f for f in dataclasses.fields(config.OptimConfig)}["momentum"]
    assert fv["momentum"].default == 0.9 and fv["momentum"].help == field.metadata["help"]
    assert fv["backbone"].flag_type() == "string enum"
    cfg = flagdefs.build(config.TrainConfig, flag_values=fv)
    assert cfg == _cfg(stream="spatial", lr_decay_epochs=(3, 9), backbone="resnet34",
                       batch_size=4)
    with pytest.raises(flags.IllegalFlagValueError):
        fv(["train", "--strategy=everywhere"])


def test_a_binary_can_change_defaults_without_restating_flags():
    fv = flags.FlagValues()
    flagdefs.define_flags(config.TrainConfig, flag_values=fv, only={"epochs", "seed"},
                          overrides={"epochs": 40, "seed": 0})
    fv(["demo"])
    assert (fv.epochs, fv.seed) == (40, 0) and "batch_size" not in fv
    cfg = flagdefs.build(config.TrainConfig, flag_values=fv, only={"epochs", "seed"},
                         stream="spatial")
    assert (cfg.optim.epochs, cfg.runtime.seed, cfg.optim.batch_size) == (40, 0, 16)
