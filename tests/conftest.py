"""Test set-up that must happen before anything touches TensorFlow.

TensorFlow fixes its device list on first use, so the two logical CPU
devices that the MirroredStrategy tests need are configured here, at
collection time, before any test module imports TF.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
if _cpus:
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # already initialised by a plugin: tests needing 2 devices skip
        pass


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A tiny prepared UCF101-layout dataset (6 classes x 4 videos, DIS flow).

    Shared by the training tests; they only read it.
    """
    from data_prep import builder, synthetic
    from data_prep.prep_config import PrepConfig

    root = tmp_path_factory.mktemp("tiny")
    synthetic.generate_ucf101_like(str(root / "videos"), videos_per_class=4, num_frames=8,
                                   height=48, width=64, seed=1)
    out = str(root / "data")
    builder.build(PrepConfig(dataset="ucf101", data_root=str(root / "videos"),
                             out_dir=out, flow="dis", short_side=40,
                             videos_per_shard=6))
    return out


# The longest modules first. Under ``--dist loadfile`` a module runs whole on
# one worker, in collection order, so a long one collected late leaves the
# other worker idle at the end while it runs alone.
_LONGEST_FIRST = ("test_export.py", "test_multi_worker.py", "test_docs.py",
                  "test_end_to_end.py", "test_data_service.py", "test_benchmark.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
