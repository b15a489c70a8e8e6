"""A trained model at work: one video, many videos, live frames, the timeline, and
the SavedModel and TFLite exports.

May import: every room of `mat_effnet` but `benchmark`.
"""
