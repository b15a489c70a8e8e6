"""absl-flag binaries and the flagfiles of the paper's Tables 2-4.

Each binary is a thin front end over the library, run through
`mat_effnet.common.cli`. Nothing in `mat_effnet` or `data_prep` imports from here.
"""
