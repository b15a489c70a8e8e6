"""A roofline bound for the Keras TV-L1: FLOPs and bytes moved per pair.

Prices one pair of `mat_effnet.ops.tvl1` at its pyramid sizes (Williams,
Waterman and Patterson, "Roofline", CACM 2009): the bound on pairs/s a
device's memory bandwidth and FLOP/s allow.
"""

from __future__ import annotations

import math

import numpy as np

from mat_effnet.ops.tvl1 import TVL1Params, pyramid_sizes


def cost_per_pair(height: int, width: int, params: TVL1Params | None = None,
                  iterations: dict | None = None) -> dict:
    """FLOPs and bytes moved per pair, for a roofline bound.

    Counts per pixel, float32: an inner iteration does ~68 FLOPs (|grad I|^2
    and TH step 14, v 4, two divergences 6, u update 4, error 6, forward
    gradients 4, dual update with two norms and four divisions 24, the
    per-pair masks 6) and, fully fused, reads 9 arrays (u1, u2, p11, p12,
    p21, p22, and the warp constants i1wx, i1wy, rho_c) and writes 6: 60
    bytes. XLA does not fuse a whole iteration into one kernel (the stencils
    and the per-pair error reduction split it), so real traffic is higher and
    the figures are a bound, not a prediction. A warp (bicubic gather of 3 images, 16 taps)
    costs ~190 FLOPs and ~100 bytes per pixel; a 5x5 median of u1 and u2
    ~2 x 2 x 100 min/max per pixel and 16 bytes. ``iterations``, if given, is either a
    `batch_tvl1` fn's ``last_stats`` or ``{"mean_per_warp": [per scale,
    finest first]}`` (mean inner iterations per warp); the "measured" entry
    then prices what the epsilon-stop actually ran (medians: one per 30
    inner iterations, rounded up). The worst case runs every iteration.
    """
    params = (params or TVL1Params()).validate()
    sizes = pyramid_sizes(height, width, params)
    flop_iter, byte_iter = 68.0, 60.0
    flop_warp, byte_warp = 190.0, 100.0
    flop_med, byte_med = 400.0, 16.0

    def total(iters_per_warp):
        flops = bytes_ = 0.0
        for (h, w), it in zip(sizes, iters_per_warp):
            px = h * w
            meds = math.ceil(it / params.inner_iterations) if params.median_filtering > 1 else 0
            flops += params.warps * px * (flop_warp + it * flop_iter + meds * flop_med)
            bytes_ += params.warps * px * (byte_warp + it * byte_iter + meds * byte_med)
        return {"flops": flops, "bytes": bytes_, "intensity": flops / bytes_}

    worst = [params.inner_iterations * params.outer_iterations] * len(sizes)
    out = {"height": height, "width": width, "levels": [list(s) for s in sizes],
           "worst_case": total(worst)}
    if iterations is not None:
        if "iterations" in iterations:  # a batch_tvl1 fn.last_stats: (B, scales, warps)
            per = np.asarray(iterations["iterations"], float).mean(axis=(0, 2)).tolist()
        else:
            per = list(iterations["mean_per_warp"])[:len(sizes)]
        out["measured"] = total(per)
        out["measured"]["mean_per_warp"] = per
    return out


def roofline_pairs_per_s(cost: dict, bandwidth_bytes_s: float = 3.35e12,
                         flops_s: float = 67e12) -> float:
    """Upper bound on pairs/s for a device, from a `cost_per_pair` entry."""
    return 1.0 / max(cost["bytes"] / bandwidth_bytes_s, cost["flops"] / flops_s)
