"""absl-flag binaries: train, evaluate, fuse, predict, demo, benchmark.

Each is a thin front end over the library, run through `experiments.cli`.
"""
