"""Pixel and flow operations every stage shares: video decoding, grey and resize,
the OpenCV flows, TV-L1 in ``keras.ops`` (Zach et al. 2007; Sanchez et al.,
IPOL 2013), and 8-bit flow quantization.

Prep, prediction, the export graph and the GPU check all compute with these.
May import: `mat_effnet.common`.
"""
