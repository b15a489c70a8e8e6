"""Data preparation: raw videos -> frames + TV-L1 flow -> sharded TFRecords.

Owns the dataset layouts, the local and Beam builders, shards and work files,
frame-folder import and export, and the synthetic and known-flow generators.
May import: `mat_effnet` (never `experiments`).
"""
