"""Test set-up that must happen before anything touches TensorFlow.

TensorFlow fixes its device list on first use, so the two logical CPU
devices that the MirroredStrategy tests need are configured here, at
collection time, before any test module imports TF.
"""

import os

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
