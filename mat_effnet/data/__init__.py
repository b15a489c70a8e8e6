"""From records to training and test clips: TSN segment sampling (paper Sect. 4.2),
clip decoding, crops and flips, and the tf.data pipelines.

May import: `mat_effnet.common`, `mat_effnet.ops`, `mat_effnet.records`.
"""
