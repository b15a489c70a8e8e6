"""Training one stream (paper Sect. 4.2): the configuration, the step, the fit and
custom loops, distribution across machines, a lost worker, and damaged records
left out.

May import: `mat_effnet.common`, `mat_effnet.ops`, `mat_effnet.records`,
`mat_effnet.data`, `mat_effnet.modeling`.
"""
