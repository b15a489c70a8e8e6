"""The setuptools shim behind ``--setup_file=./setup.py`` (Beam's remote workers).

Apache Beam stages this package for Dataflow, Flink or Spark workers by
running ``python setup.py sdist`` and installing the result on every worker.
Everything about the package (name, version, dependencies, package data,
entry points) lives in setup.cfg; this file only hands over to it.
"""

from setuptools import setup

setup()
