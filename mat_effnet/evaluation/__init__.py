"""The test protocol (multi-segment, multi-crop, paper Sect. 4), video-level metrics,
late fusion of the streams (Sect. 3) and the fusion report.

May import: `mat_effnet.common`, `mat_effnet.ops`, `mat_effnet.records`,
`mat_effnet.data`, `mat_effnet.modeling`.
"""
