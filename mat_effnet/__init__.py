"""mat-effnet: MAT-EffNet (Zhou et al., Multimedia Systems 2022) in TensorFlow/Keras.

Submodules are imported explicitly (``from mat_effnet import models``) so that
importing the package never starts TensorFlow.
"""

__version__ = "0.1.0"
