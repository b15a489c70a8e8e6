"""absl-flag binaries: prep, train, evaluate, fuse, predict, demo, benchmark."""
