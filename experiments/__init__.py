"""absl-flag binaries: train, evaluate, fuse, predict, demo, benchmark."""

import os

# The binaries print one clear line on bad input; TensorFlow's C++ INFO and
# WARNING chatter would bury it.  Users can still ask for it (=0).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
