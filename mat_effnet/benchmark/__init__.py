"""`mat-effnet-benchmark`'s measurements, one module per topic.

May import: every room of `mat_effnet`, and `data_prep` (it measures preparation
too). `device` and `device_measure` import no TensorFlow (the GPU check runs on JAX).
"""
