"""Winograd F(4x4, 3x3) convolution for 3x3 (and, split into 3x3 pieces, up to 6x6) stride-1 kernels.

Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, k, k)``, output ``(N, M, Ho, Wo)``. The input
is reordered to NHWC once per chunk so that both tile transforms run along contiguous channel
vectors; the products summed over channels run as 36 GEMMs per group (one per tile position)
through the register-blocked tile of :mod:`minicaffe.simd` (NumPy's BLAS below MR tiles); the output
transform adds the bias (and an optional ReLU) and writes NCHW, or channels last (the ``*_worker``
task loops, which a whole-forward program runs). Filter transforms are cached per weight array and
checked against the current values on every use. Not for strided, dilated or depthwise
convolutions.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ...simd import MR, NR, fetch_add, indirect_tile, task_done, tile_task
from .cache import cached_transform, fused_cap
from .nhwc_kernels import next_task, store_pixel


def winograd_filters(w, group=1):
    """w: (M, Cg, k, k) float32 -> U: (36, group, S*Cg, M/group), the Winograd F(4x4, 3x3) filter
    transform (:func:`_winograd_filters_uncached`), computed once per weight array and reused while
    its values are unchanged (:func:`cached_transform`)."""
    return cached_transform(w, ("winograd", group), lambda wf: _winograd_filters_uncached(wf, group))


# ---- Winograd F(4x4, 3x3) (Lavin & Gray, 2016): each 4x4 output tile from a 6x6 input tile with
# 36 multiplies per (m, c) pair instead of 144 (4x fewer), interpolation points 0, +-1, +-2, inf:
#   B^T = [[4, 0,-5, 0, 1, 0],      G = [[ 1/4,    0,    0],     A^T = [[1, 1, 1, 1, 1, 0],
#          [0,-4,-4, 1, 1, 0],           [-1/6, -1/6, -1/6],            [0, 1,-1, 2,-2, 0],
#          [0, 4,-4,-1, 1, 0],           [-1/6,  1/6, -1/6],            [0, 1, 1, 4, 4, 0],
#          [0,-2,-1, 2, 1, 0],           [1/24, 1/12,  1/6],            [0, 1,-1, 8,-8, 1]]
#          [0, 2,-1,-2, 1, 0],           [1/24,-1/12,  1/6],
#          [0, 4, 0,-5, 0, 1]]           [   0,    0,    1]]


@njit(cache=True, inline="always")
def _g3(g0, g1, g2):
    # G applied to one 3-vector
    return (0.25 * g0,
            -(g0 + g1 + g2) / 6.0,
            -(g0 - g1 + g2) / 6.0,
            g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
            g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
            g2)


@njit(parallel=True, cache=True, nogil=True)
def _winograd_filter(w):
    # w: (M, Cg, 3, 3) -> U: (36, M, Cg) = G g G^T, computed in float64 then rounded once
    M, Cg = w.shape[0], w.shape[1]
    U = np.empty((36, M, Cg), dtype=np.float32)
    for m in prange(M):
        t = np.empty((6, 3), dtype=np.float64)
        for c in range(Cg):
            for j in range(3):
                v = _g3(np.float64(w[m, c, 0, j]), np.float64(w[m, c, 1, j]), np.float64(w[m, c, 2, j]))
                for i in range(6):
                    t[i, j] = v[i]
            for i in range(6):
                v = _g3(t[i, 0], t[i, 1], t[i, 2])
                for j in range(6):
                    U[i * 6 + j, m, c] = v[j]
    return U


@njit(parallel=True, cache=True, nogil=True)
def _pad_nhwc(x, n0, nb, pt, pl, xt):
    # x: (N, C, H, W) -> xt[:nb]: (nb, Hp, Wp, C), images n0..n0+nb zero-padded (pt rows above, pl
    # columns left, zeros to Hp x Wp) and reordered NCHW -> NHWC, so that the tile transforms run
    # along contiguous channel vectors
    N, C, H, W = x.shape
    Hp, Wp = xt.shape[1], xt.shape[2]
    h1, w1 = min(H, Hp - pt), min(W, Wp - pl)
    for t in prange(nb * Hp):
        n = t // Hp
        r = t % Hp
        row = xt[n, r]
        row[:, :] = 0.0
        h = r - pt
        if 0 <= h < h1:
            for c in range(C):
                src = x[n0 + n, c, h]
                for q in range(w1):
                    row[pl + q, c] = src[q]


@njit(cache=True, nogil=True, inline="always")
def _bt6(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5):
    # the six-point input transform of F(4x4, 3x3), o = B^T d, along vectors (d_i, o_i: (n,));
    # applied down a tile's rows, then along its columns (inlined: the loop stays vectorised)
    for c in range(o0.shape[0]):
        o0[c] = 4.0 * d0[c] - 5.0 * d2[c] + d4[c]
        o1[c] = -4.0 * (d1[c] + d2[c]) + d3[c] + d4[c]
        o2[c] = 4.0 * (d1[c] - d2[c]) - d3[c] + d4[c]
        o3[c] = 2.0 * (d3[c] - d1[c]) - d2[c] + d4[c]
        o4[c] = 2.0 * (d1[c] - d3[c]) - d2[c] + d4[c]
        o5[c] = 4.0 * d1[c] - 5.0 * d3[c] + d5[c]



@njit(cache=True, nogil=True, inline="always")
def _task_columns(rows, tw):
    # tile columns per task of the transforms: whole rows of tiles when there are many rows (a
    # batch), else parts of rows, so that a batch-1 layer of 4-7 tile rows still makes ~16 tasks
    # for the threads to share
    return tw if rows >= 16 else max(1, (rows * tw) // 16)


@njit(cache=True, nogil=True, inline="always")
def _tile_row_task(t, th, parts, cols):
    # a transform's task t -> (image, row of tiles, first tile column): rows of th tiles per image,
    # each in ``parts`` parts of ``cols`` tiles
    n = t // (th * parts)
    return n, t // parts - n * th, (t % parts) * cols


@njit(parallel=True, cache=True, nogil=True)
def _winograd_input(xt, nb, G, ks, th, tw, workers, counter, V):
    # _winograd_input_worker on ``workers`` threads (counter: int64[2] zeros)
    for _w in prange(workers):
        _winograd_input_worker(xt, nb, G, ks, th, tw, counter, V)


@njit(cache=True, nogil=True)
def _winograd_input_worker(xt, nb, G, ks, th, tw, counter, V):
    # xt: (nb, Hp, Wp, C) padded NHWC -> V: (36, G, nb*th*tw, ks*ks*Cg) = B^T d B of every 6x6 tile
    # of every 3x3 piece (offset 3*(s // ks), 3*(s % ks)); columns (image, tile row, tile column), K
    # axis (piece, channel in group). Every operation runs along a contiguous vector of channels.
    # Tasks: rows of tiles (or parts of rows, _task_columns) from counter[0] (counted in
    # counter[1]); one thread's loop, returns the task count.
    C = xt.shape[3]
    Cg = C // G
    S = ks * ks
    T = th * tw
    cols = _task_columns(nb * th, tw)
    parts = -(-tw // cols)
    total = nb * th * parts
    u = np.empty((6, 6, C), dtype=np.float32)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        n, a, b0 = _tile_row_task(t, th, parts, cols)
        for bt in range(b0, min(tw, b0 + cols)):
            col = n * T + a * tw + bt
            for s in range(S):
                r0 = 4 * a + 3 * (s // ks)
                q0 = 4 * bt + 3 * (s % ks)
                # u[i, q] = (B^T d)[i] for column q of the tile: six input rows combined
                for q in range(6):
                    d0, d1, d2 = xt[n, r0, q0 + q], xt[n, r0 + 1, q0 + q], xt[n, r0 + 2, q0 + q]
                    d3, d4, d5 = xt[n, r0 + 3, q0 + q], xt[n, r0 + 4, q0 + q], xt[n, r0 + 5, q0 + q]
                    _bt6(d0, d1, d2, d3, d4, d5, u[0, q], u[1, q], u[2, q], u[3, q], u[4, q], u[5, q])
                # V[i*6 + j] = (u[i] B)[j]: the same six-point transform along the tile's columns
                for g in range(G):
                    c0 = g * Cg
                    k0 = s * Cg
                    for i in range(6):
                        e0, e1, e2 = u[i, 0, c0:c0 + Cg], u[i, 1, c0:c0 + Cg], u[i, 2, c0:c0 + Cg]
                        e3, e4, e5 = u[i, 3, c0:c0 + Cg], u[i, 4, c0:c0 + Cg], u[i, 5, c0:c0 + Cg]
                        _bt6(e0, e1, e2, e3, e4, e5, V[i * 6, g, col, k0:k0 + Cg],
                             V[i * 6 + 1, g, col, k0:k0 + Cg], V[i * 6 + 2, g, col, k0:k0 + Cg],
                             V[i * 6 + 3, g, col, k0:k0 + Cg], V[i * 6 + 4, g, col, k0:k0 + Cg],
                             V[i * 6 + 5, g, col, k0:k0 + Cg])
        task_done(counter, 1)
    return total


@njit(parallel=True, cache=True, nogil=True)
def _winograd_output(Mt, b, relu, cap, n0, nb, th, tw, workers, counter, y):
    # _winograd_output_worker on ``workers`` threads into images n0.. of y: (N, M, Ho, Wo) NCHW
    # (b: (M,), zeros for no bias; counter: int64[2] zeros)
    N, M, Ho, Wo = y.shape
    lo = np.float32(0.0) if relu else np.float32(-np.inf)
    hi = cap if relu else np.float32(np.inf)
    geo = np.array((Ho, Wo, Ho, Wo, 0, 0, 1), dtype=np.int64)
    yf = y.reshape(y.size)[n0 * M * Ho * Wo:]
    for _w in prange(workers):
        _winograd_output_worker(Mt, b, lo, hi, nb, th, tw, geo, counter, yf)


@njit(cache=True, nogil=True)
def _winograd_output_worker(Mt, b, lo, hi, nb, th, tw, geo, counter, yf):
    # Mt: (36, G, nb*th*tw, Mg), b: (M,) -> the (nb, M, Ho, Wo) output min(max(A^T m A + b, lo), hi),
    # the last tile row / column cropped to Ho x Wo. geo: int64 (Ho, Wo, oHp, oWp, ot, ol, nchw):
    # yf holds it NCHW when nchw, else channels last at (ot, ol) of an (nb, oHp, oWp, M) array whose
    # zero border is written too (the next convolution's padded input). The transform runs along
    # contiguous vectors of output channels. Tasks: rows of tiles (or parts of rows,
    # _task_columns), then the border's rows, from
    # counter[0] (counted in counter[1]); one thread's loop, returns the task count.
    G, Mg = Mt.shape[1], Mt.shape[3]
    M = G * Mg
    Ho, Wo, oHp, oWp, ot, ol, nchw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    T = th * tw
    cols = _task_columns(nb * th, tw)
    parts = -(-tw // cols)
    total = nb * th * parts
    border = 0 if nchw or (oHp, oWp, ot, ol) == (Ho, Wo, 0, 0) else nb * oHp
    sv = np.empty((4, 6, Mg), dtype=np.float32)
    o = np.empty((4, 4, M), dtype=np.float32)
    while True:
        t = next_task(counter, total, border, yf, oHp, oWp, ot, ol, Ho, Wo, M)
        if t < 0:
            break
        n, a, b0 = _tile_row_task(t, th, parts, cols)
        for bt in range(b0, min(tw, b0 + cols)):
            col = n * T + a * tw + bt
            for g in range(G):
                # sv[i, j] = (A^T m)[i] for column j of the tile
                for j in range(6):
                    m0, m1, m2 = Mt[j, g, col], Mt[6 + j, g, col], Mt[12 + j, g, col]
                    m3, m4, m5 = Mt[18 + j, g, col], Mt[24 + j, g, col], Mt[30 + j, g, col]
                    s0, s1, s2, s3 = sv[0, j], sv[1, j], sv[2, j], sv[3, j]
                    for m in range(Mg):
                        s0[m] = m0[m] + m1[m] + m2[m] + m3[m] + m4[m]
                        s1[m] = m1[m] - m2[m] + 2.0 * (m3[m] - m4[m])
                        s2[m] = m1[m] + m2[m] + 4.0 * (m3[m] + m4[m])
                        s3[m] = m1[m] - m2[m] + 8.0 * (m3[m] - m4[m]) + m5[m]
                for i in range(4):
                    e0, e1, e2 = sv[i, 0], sv[i, 1], sv[i, 2]
                    e3, e4, e5 = sv[i, 3], sv[i, 4], sv[i, 5]
                    o0 = o[i, 0, g * Mg:(g + 1) * Mg]
                    o1 = o[i, 1, g * Mg:(g + 1) * Mg]
                    o2 = o[i, 2, g * Mg:(g + 1) * Mg]
                    o3 = o[i, 3, g * Mg:(g + 1) * Mg]
                    bg = b[g * Mg:(g + 1) * Mg]
                    for m in range(Mg):
                        bias = bg[m]
                        o0[m] = min(max(e0[m] + e1[m] + e2[m] + e3[m] + e4[m] + bias, lo), hi)
                        o1[m] = min(max(e1[m] - e2[m] + 2.0 * (e3[m] - e4[m]) + bias, lo), hi)
                        o2[m] = min(max(e1[m] + e2[m] + 4.0 * (e3[m] + e4[m]) + bias, lo), hi)
                        o3[m] = min(max(e1[m] - e2[m] + 8.0 * (e3[m] - e4[m]) + e5[m] + bias, lo), hi)
            # store the 4x4 tile: NHWC -> NCHW, or a channels-last row of M at a time
            for i in range(4):
                oh = 4 * a + i
                if oh >= Ho:
                    break
                for j in range(4):
                    ow = 4 * bt + j
                    if ow >= Wo:
                        break
                    store_pixel(o[i, j], yf, n, oh, ow, nchw, Ho, Wo, oHp, oWp, ot, ol)
        task_done(counter, 1)
    return total + border


def _winograd_filters_uncached(w, group=1):
    # w: (M, Cg, k, k) -> U: (36, group, S*Cg, M/group), S = ceil(k/3)^2 pieces; K axis (piece,
    # channel in group) as V's in _winograd_input, output channels last (the GEMM's N axis)
    M, Cg, k, _ = w.shape
    ks = -(-k // 3)
    S = ks * ks
    Mg = M // group
    wp = np.zeros((M, Cg, 3 * ks, 3 * ks), dtype=np.float32)
    wp[:, :, :k, :k] = w
    U = np.empty((36, group, S * Cg, Mg), dtype=np.float32)
    for s in range(S):
        oa, ob = 3 * (s // ks), 3 * (s % ks)
        Us = _winograd_filter(np.ascontiguousarray(wp[:, :, oa:oa + 3, ob:ob + 3]))   # (36, M, Cg)
        for g in range(group):
            # (36, Mg, Cg) -> (36, Cg, Mg): K rows, output channels along the row
            U[:, g, s * Cg:(s + 1) * Cg] = Us[:, g * Mg:(g + 1) * Mg].transpose(0, 2, 1)
    return U


def _pack_panels(U):
    # U: (36, G, K, Mg) -> (36, G, P, K*NR): output channels in panels of NR (zero-padded past Mg),
    # each K x NR row-major, the B operand of minicaffe.simd.indirect_tile
    T36, G, K, Mg = U.shape
    P = -(-Mg // NR)
    out = np.zeros((T36, G, P, K, NR), dtype=np.float32)
    for p in range(P):
        m1 = min(Mg, (p + 1) * NR)
        out[:, :, p, :, :m1 - p * NR] = U[:, :, :, p * NR:m1]
    return out.reshape(T36, G, P, K * NR)




#: rows (tiles) of a Winograd GEMM per task
GEMM_TILES_PER_TASK = 8


@njit(parallel=True, cache=True, nogil=True)
def _winograd_gemms(V, Up, offs, workers, counter, Mt):
    # _winograd_gemms_worker on ``workers`` threads (counter: int64[2] zeros)
    for _w in prange(workers):
        _winograd_gemms_worker(V, Up, offs, counter, Mt)


@njit(cache=True, nogil=True)
def _winograd_gemms_worker(V, Up, offs, counter, Mt):
    # The 36 x G products Mt[k, g] (R, Mg) = V[k, g] (R, K) @ U[k, g] (K, Mg) with the register-
    # blocked tile (MR rows x NR channels; Up: U in NR-channel panels). Tasks (position, group,
    # panel, block of row tiles) from counter[0] (counted in counter[1]), so consecutive tasks
    # share a panel. Rows >= MR: the last tile of a product is shifted back to end at row R. One
    # thread's loop, returns the task count.
    T36, G, R, K = V.shape
    P = Up.shape[2]
    Mg = Mt.shape[3]
    ntiles = (R + MR - 1) // MR
    nblk = (ntiles + GEMM_TILES_PER_TASK - 1) // GEMM_TILES_PER_TASK
    total = T36 * G * P * nblk
    vf = V.reshape(V.size)
    cs = np.empty(MR * NR, dtype=np.float32)
    pix = np.empty(MR, dtype=np.int64)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        k, g, pnl, blk = tile_task(t, nblk, P, G)
        panel = Up[k, g, pnl]
        base = (k * G + g) * R * K
        m0 = pnl * NR
        mcount = min(NR, Mg - m0)
        out = Mt[k, g]
        for ti in range(blk * GEMM_TILES_PER_TASK, min(ntiles, (blk + 1) * GEMM_TILES_PER_TASK)):
            r0 = min(ti * MR, R - MR)
            for p in range(MR):
                pix[p] = base + (r0 + p) * K
            indirect_tile(vf, pix, offs, K, panel, cs)
            for p in range(MR):
                dst = out[r0 + p, m0:m0 + mcount]
                src = cs[p * NR:p * NR + mcount]
                for mm in range(mcount):
                    dst[mm] = src[mm]
        task_done(counter, 1)
    return total


#: bytes allowed for the transformed input (and, as much again, the products) of one chunk: larger
#: chunks run no faster and hold more memory
WINOGRAD_BUDGET = 24 << 20


def winograd_plan(x_shape, w_shape, pad, budget=None):
    """x: (N, C, H, W), w: (M, C/group, k, k) -> (ks, Ho, Wo, th, tw, Hp, Wp, nb): 3x3 pieces per
    side, the output size, rows and columns of 4x4 tiles, the padded input (whole 6x6 tiles for
    every piece's offset: the tile loops need no bounds checks) and the images per chunk (``budget``
    bytes of transformed input, default WINOGRAD_BUDGET)."""
    N, C, H, W = x_shape
    k = w_shape[2]
    ks = -(-k // 3)
    pt, pb, pl, pr = pad
    Ho, Wo = H + pt + pb - k + 1, W + pl + pr - k + 1
    th, tw = (Ho + 3) // 4, (Wo + 3) // 4
    budget = WINOGRAD_BUDGET if budget is None else budget
    nb = int(max(1, min(N, budget // max(1, 36 * C * ks * ks * th * tw * 4))))
    return ks, Ho, Wo, th, tw, 4 * th + 2 + 3 * (ks - 1), 4 * tw + 2 + 3 * (ks - 1), nb


def convolution_winograd_cpu(x, w, b, pad=(1, 1, 1, 1), group=1, relu=False, relu_cap=None):
    """x: (N, C, H, W), w: (M, C/group, k, k) -> (N, M, Ho, Wo); stride-1 convolution by Winograd
    F(4x4, 3x3) (same contract as :func:`convolution_reference` for those layers; ``relu=True``
    applies max(0, .) to the output, as a following in-place ReLU would; ``relu_cap``: also min(., cap)).

    Per chunk of images: pad + reorder to NHWC, transform every 6x6 tile along channel vectors
    (V: 36 x tiles x channels), 36 GEMMs per group (tiles x K) @ (K x Mg) through the register-
    blocked tile kernel (BLAS when a chunk has fewer than 6 tiles), and the output transform
    along output-channel vectors with bias (and ReLU) into NCHW. k > 3 (CaffeNet
    conv2: 5x5) is zero-padded to 3*ks and split into ks*ks 3x3 pieces at offsets (3a, 3b) whose
    transformed inputs stack along K, so each tile still needs one GEMM row and one output
    transform: y = the sum over pieces."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, k, _ = w.shape
    ks, Ho, Wo, th, tw, Hp, Wp, nb = winograd_plan(x.shape, w.shape, pad)
    S = ks * ks
    pt, pb, pl, pr = pad
    T = th * tw
    Mg = M // group
    # the products through minicaffe's own tile kernel (one thread pool, dynamic scheduling) when
    # every chunk has at least MR tile rows; through BLAS otherwise
    own = T >= MR
    workers = numba.get_num_threads()
    if own:
        Up = cached_transform(w, ("winograd-panels", group),
                              lambda wf: _pack_panels(_winograd_filters_uncached(wf, group)))
        offs = np.arange(S * Cg, dtype=np.int64)
    else:
        U = winograd_filters(w, group)
    has_bias = b is not None
    bb = np.ascontiguousarray(b, dtype=np.float32) if has_bias else np.zeros(M, np.float32)
    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    xt = np.empty((nb, Hp, Wp, C), dtype=np.float32)
    V = Mt = None
    for n0 in range(0, N, nb):
        cur = min(nb, N - n0)
        if V is None or V.shape[2] != cur * T:
            V = np.empty((36, group, cur * T, S * Cg), dtype=np.float32)
            Mt = np.empty((36, group, cur * T, Mg), dtype=np.float32)
        _pad_nhwc(x, n0, cur, pt, pl, xt)
        _winograd_input(xt, cur, group, ks, th, tw, workers, np.zeros(2, np.int64), V)
        if own:
            _winograd_gemms(V, Up, offs, workers, np.zeros(2, np.int64), Mt)
        else:
            for g in range(group):
                np.matmul(V[:, g], U[:, g], out=Mt[:, g])       # 36 x (tiles, S*Cg) @ (S*Cg, Mg)
        _winograd_output(Mt, bb, relu, fused_cap(relu_cap), n0, cur, th, tw, workers,
                         np.zeros(2, np.int64), y)
    return y
