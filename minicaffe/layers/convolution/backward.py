"""Convolution backward on the CPU: gradients w.r.t. the input, the weight and the bias.

im2col per batch chunk (Numba), the two GEMMs per group through NumPy's BLAS, col2im back;
depthwise layers use a direct kernel. Same contract as :func:`convolution_backward_reference`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .im2col import _im2col, _im2col_chunk, _valid_cols


@njit(parallel=True, cache=True, nogil=True)
def _col2im(col, n0, nb, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, dx):
    # col: (C*kh*kw, nb*Ho*Wo), rows (c, i, j) as in _im2col; adds into dx[n0:n0+nb].
    # One (image, channel) plane per iteration (plane writes never overlap: no races; CaffeNet's
    # conv1 has only 3 channels, so parallelising over channels alone left a core idle). The
    # valid ow range of each (j) is found once, so the inner loop is a branch-free pass over
    # strided views indexed by the loop variable only.
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    P = Ho * Wo
    for t in prange(nb * C):
        n = t // C
        c = t % C
        plane = dx[n0 + n, c]
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = j * dw - pl
                lo, hi = _valid_cols(off, sw, W, Wo)
                if hi <= lo:
                    continue
                for oh in range(Ho):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    base = n * P + oh * Wo
                    src = col[r, base + lo:base + hi]
                    dst = plane[ih, lo * sw + off:(hi - 1) * sw + off + 1:sw]
                    for k in range(hi - lo):
                        dst[k] += src[k]


@njit(parallel=True, cache=True, nogil=True)
def _gather_dy(dy, n0, nb, out):
    # dy: (N, M, P) -> out: (M, nb*P), the column layout of the forward GEMM result
    M, P = dy.shape[1], dy.shape[2]
    for m in prange(M):
        for n in range(nb):
            for p in range(P):
                out[m, n * P + p] = dy[n0 + n, m, p]


@njit(parallel=True, cache=True, nogil=True)
def _depthwise_backward(dy, x, w, sh, sw, pt, pl, dh, dw, mult, dx, dwt):
    # dy: (N, C*mult, Ho, Wo); dx: (N, C, H, W) zeroed; dwt: (N, C*mult, kh, kw) per-sample
    # weight gradients (summed by the caller), so each (n, c) iteration writes only its own cells.
    # Zero-padded copies of the input plane and of its gradient make every tap a branch-free pass
    # over whole output rows, on views indexed by the loop variable only (vectorises).
    N, C, H, W = x.shape
    kh, kw = w.shape[2], w.shape[3]
    Ho, Wo = dy.shape[2], dy.shape[3]
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    for t in prange(N * C):
        n = t // C
        c = t % C
        xp = np.zeros((Hp, Wp), dtype=np.float32)
        xp[pt:pt + H, pl:pl + W] = x[n, c]
        dxp = np.zeros((Hp, Wp), dtype=np.float32)
        for q in range(mult):
            m = c * mult + q
            for i in range(kh):
                for j in range(kw):
                    wv = w[m, 0, i, j]
                    acc = np.float32(0.0)
                    for oh in range(Ho):
                        r = oh * sh + i * dh
                        g = dy[n, m, oh]
                        xr = xp[r, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
                        dr = dxp[r, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
                        for ow in range(Wo):
                            acc += g[ow] * xr[ow]
                            dr[ow] += g[ow] * wv
                    dwt[n, m, i, j] = acc
        dx[n, c] = dxp[pt:pt + H, pl:pl + W]


def convolution_backward_cpu(dy, x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """Same contract as :func:`convolution_backward_reference`, float32.

    im2col per batch chunk (Numba), the two GEMMs per group through NumPy's BLAS
    (``dW_g = dY_g col_g^T``, ``dcol_g = W_g^T dY_g``), col2im back (Numba). Depthwise convs use a
    direct kernel.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw_ = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = dy.shape[2], dy.shape[3]
    db = dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    dx = np.zeros((N, C, H, W), dtype=np.float32)
    if group == C and Cg == 1:
        dwt = np.zeros((N, M, kh, kw), dtype=np.float32)
        _depthwise_backward(dy, x, np.ascontiguousarray(w, np.float32), sh, sw, pt, pl, dh, dw_, M // C, dx, dwt)
        return dx, dwt.sum(axis=0).reshape(w.shape), db
    if kh == kw == 1 and sh == sw == 1 and pad == (0, 0, 0, 0) and group == 1:
        # 1x1 conv: the column matrix is the input itself, (C, H*W) per image; no im2col/col2im
        # two plain 2-D GEMMs over all images at once (batched matmul with a transposed operand
        # leaves BLAS): NCHW -> (C, N*H*W) and (M, N*H*W) copies
        P = H * W
        xc = np.ascontiguousarray(x.reshape(N, C, P).transpose(1, 0, 2)).reshape(C, N * P)
        dyc = np.ascontiguousarray(dy.reshape(N, M, P).transpose(1, 0, 2)).reshape(M, N * P)
        w2 = np.ascontiguousarray(w.reshape(M, C), dtype=np.float32)
        dw = dyc @ xc.T                                            # (M, N*P) @ (N*P, C)
        dxc = w2.T @ dyc                                           # (C, M) @ (M, N*P)
        dx = np.ascontiguousarray(dxc.reshape(C, N, P).transpose(1, 0, 2))   # back to NCHW
        return dx.reshape(N, C, H, W), dw.reshape(w.shape), db
    P = Ho * Wo
    K = C * kh * kw
    Kg, Mg = Cg * kh * kw, M // group
    nb = _im2col_chunk(N, K, P)
    w2 = np.ascontiguousarray(w.reshape(M, Kg), dtype=np.float32)   # OIHW -> (M, Cg*kh*kw)
    dw2 = np.zeros((M, Kg), dtype=np.float32)
    dy3 = dy.reshape(N, M, P)
    for n0 in range(0, N, nb):
        cur = min(nb, N - n0)
        col = np.empty((K, cur * P), dtype=np.float32)
        _im2col(x, n0, cur, kh, kw, sh, sw, pt, pl, dh, dw_, Ho, Wo, col)
        dyc = np.empty((M, cur * P), dtype=np.float32)
        _gather_dy(dy3, n0, cur, dyc)
        dcol = np.empty((K, cur * P), dtype=np.float32)
        for g in range(group):
            dw2[g * Mg:(g + 1) * Mg] += dyc[g * Mg:(g + 1) * Mg] @ col[g * Kg:(g + 1) * Kg].T
            np.matmul(w2[g * Mg:(g + 1) * Mg].T, dyc[g * Mg:(g + 1) * Mg], out=dcol[g * Kg:(g + 1) * Kg])
        _col2im(dcol, n0, cur, kh, kw, sh, sw, pt, pl, dh, dw_, Ho, Wo, dx)
    return dx, dw2.reshape(w.shape), db
