"""Shared kernel test cases: odd shapes (stride not dividing, pad > 0, groups, batch 1 and 3).

Used by tests/test_kernels.py (cpu vs reference) and tests/cuda_sim_kernels.py (cuda vs
reference, run under NUMBA_ENABLE_CUDASIM=1 in a subprocess). Each case is
(id, op name, kwargs-builder) so both runners build identical inputs from fixed seeds.
"""
import numpy as np


def rnd(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# conv: (id, x shape, w shape, stride, pad(t,b,l,r), dilation, group, bias)
CONV = [
    ("k3s2p1_b1", (1, 3, 11, 9), (4, 3, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True),
    ("k5x3_s3x2_group2_b3", (3, 4, 10, 7), (6, 2, 5, 3), (3, 2), (2, 2, 1, 1), (1, 1), 2, True),
    ("dilated", (2, 3, 9, 10), (5, 3, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, True),
    ("asym_same_pad", (1, 3, 8, 9), (4, 3, 3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1, False),
    ("depthwise", (3, 5, 7, 6), (5, 1, 3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 5, True),
    ("depthwise_mult2", (1, 3, 7, 7), (6, 1, 5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 3, True),
    ("depthwise_s1_asym_pad", (2, 4, 7, 6), (4, 1, 5, 5), (1, 1), (2, 1, 2, 3), (1, 1), 4, True),
    ("1x1", (3, 6, 5, 4), (7, 6, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
]

# pooling: (id, x shape, method, kernel, stride, pad, ceil)
POOL = [
    ("max_k3s2_13", (1, 3, 13, 13), 0, (3, 3), (2, 2), (0, 0), True),
    ("max_k3s2_14_ceil", (3, 2, 14, 14), 0, (3, 3), (2, 2), (0, 0), True),
    ("max_pad1", (2, 3, 9, 8), 0, (3, 3), (2, 2), (1, 1), True),
    ("max_k3s1_odd", (2, 3, 7, 6), 0, (3, 3), (1, 1), (0, 0), True),
    ("max_k3s3_ceil_clipped", (1, 2, 11, 10), 0, (3, 3), (3, 3), (0, 0), True),
    ("ave_pad1", (2, 3, 9, 8), 1, (3, 3), (2, 2), (1, 1), True),
    ("ave_k2s3_floor", (1, 4, 11, 10), 1, (2, 3), (3, 2), (0, 1), False),
    ("ave_global", (3, 4, 7, 5), 1, (7, 5), (1, 1), (0, 0), True),
]

# lrn: (id, x shape, size, alpha, beta, k, region)
LRN = [
    ("across5", (2, 7, 3, 3), 5, 1e-4 * 1000, 0.75, 1.0, 0),
    ("across3_k2", (1, 4, 5, 6), 3, 0.5, 0.6, 2.0, 0),
    ("within3", (3, 2, 5, 4), 3, 0.3, 0.75, 1.0, 1),
]
