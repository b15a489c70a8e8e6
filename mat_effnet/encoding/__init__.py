"""Frames to records: one video into the JPEG and quantized-flow records a stream
reads, and batched flow across many videos.

Data preparation (`data_prep`) and prediction (`mat_effnet.serving`) both go
through here, so a prediction sees exactly the bytes training saw.
May import: `mat_effnet.common`, `mat_effnet.ops`, `mat_effnet.records`.
"""
