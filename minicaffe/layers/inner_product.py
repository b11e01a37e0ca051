"""Fully connected layer (Caffe type ``InnerProduct``).

Shapes: ``x: (N, ...)`` is flattened from ``axis`` (default 1) to ``(N, K)`` in row-major
(C, H, W) order — the order Caffe's fc6 weights expect after pool5, so no reorder is needed
for Caffe weights (PyTorch and TF exports may need one; the converters say where). Weight is
``(M, K)`` (``transpose: true`` stores ``(K, M)``), bias ``(M,)``; output ``(N, M)``.
Implementations: ``inner_product_reference`` (NumPy ``x @ W.T``), ``inner_product_cpu`` (BLAS
GEMM/GEMV through NumPy, bias added by a Numba kernel; small batches stream the weights once
through ``inner_product_rows_cpu``), ``inner_product_cuda`` (a shared-memory tiled matrix product,
in the style of Numba's documentation example). A whole-forward program (:mod:`minicaffe.program`)
runs the rows kernel (``_fc_rows_worker``) up to 16 inputs, and past that ``_pack_columns_worker``
(the inputs as the 1x1 GEMM's B panels), the GEMM over the weight rows in place and
``_bias_transpose_worker``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda, float32, njit, prange

from ..backend import device_empty, to_device
from ..simd import NR, fetch_add, task_done
from .base import Layer, as_bool, register
from .convolution.cache import clip_bounds, fused_cap


def inner_product_reference(x, w, b, transpose=False):
    """x: (N, K), w: (M, K) (or (K, M) if transpose), b: (M,) or None -> (N, M)."""
    y = x @ (w if transpose else w.T)
    if b is not None:
        y = y + b
    return y.astype(np.float32, copy=False)


@njit(parallel=True, cache=True, nogil=True)
def _add_bias_rows(y, b, has_bias, relu, cap):
    # y: (N, M) += b, then max(0, .) when relu
    N, M = y.shape
    for n in prange(N):
        row = y[n]
        for m in range(M):
            v = row[m] + b[m] if has_bias else row[m]
            row[m] = min(max(v, np.float32(0.0)), cap) if relu else v


#: weight rows per task of the small-batch kernel
ROWS_MR = 8
#: k-chunk: the task's ROWS_MR row chunks (16 KB) stay in L1 while every input meets them
_KC = 512


@njit(cache=True, inline="always", fastmath=True)
def _quad(x, n, k0, k1, w0, w1, w2, w3, acc, r0):
    # acc[n + i, r0 + r] += x[n + i, k0:k1] . w_r (i, r < 4): 16 dot products in one pass over k
    xa, xb, xc, xd = x[n, k0:k1], x[n + 1, k0:k1], x[n + 2, k0:k1], x[n + 3, k0:k1]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
    for k in range(k1 - k0):
        a, b, c, d = xa[k], xb[k], xc[k], xd[k]
        v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
        s00 += v0 * a
        s01 += v1 * a
        s02 += v2 * a
        s03 += v3 * a
        s10 += v0 * b
        s11 += v1 * b
        s12 += v2 * b
        s13 += v3 * b
        s20 += v0 * c
        s21 += v1 * c
        s22 += v2 * c
        s23 += v3 * c
        s30 += v0 * d
        s31 += v1 * d
        s32 += v2 * d
        s33 += v3 * d
    _add4(acc[n], r0, s00, s01, s02, s03)
    _add4(acc[n + 1], r0, s10, s11, s12, s13)
    _add4(acc[n + 2], r0, s20, s21, s22, s23)
    _add4(acc[n + 3], r0, s30, s31, s32, s33)


@njit(cache=True, inline="always")
def _add4(row, r0, a, b, c, d):
    # row[r0:r0 + 4] += (a, b, c, d): four finished dot products into a block's sums
    row[r0] += a
    row[r0 + 1] += b
    row[r0 + 2] += c
    row[r0 + 3] += d


@njit(cache=True, inline="always", fastmath=True)
def _dots8(xa, w0, w1, w2, w3, w4, w5, w6, w7, out):
    # out[0:8] += the dot products of one input chunk with eight weight-row chunks
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for k in range(xa.shape[0]):
        a = xa[k]
        s0 += w0[k] * a
        s1 += w1[k] * a
        s2 += w2[k] * a
        s3 += w3[k] * a
        s4 += w4[k] * a
        s5 += w5[k] * a
        s6 += w6[k] * a
        s7 += w7[k] * a
    _add4(out, 0, s0, s1, s2, s3)
    _add4(out, 4, s4, s5, s6, s7)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _fc_rows(x, w, b, has_bias, relu, cap, y):
    # x: (N, K), w: (M, K) -> y: (N, M), M >= ROWS_MR: _fc_block for every block of ROWS_MR weight rows
    M = w.shape[0]
    lo = np.float32(0.0) if relu else np.float32(-np.inf)
    hi = cap if relu else np.float32(np.inf)
    bb = b if has_bias else np.zeros(M, dtype=np.float32)
    for t in prange((M + ROWS_MR - 1) // ROWS_MR):
        _fc_block(x, w, bb, lo, hi, y, t)


@njit(cache=True, nogil=True, fastmath=True)
def _fc_rows_worker(x, w, b, lo, hi, y, counter):
    # _fc_rows on any number of threads: blocks of weight rows from counter[0] (counted in
    # counter[1]); b: (M,) (zeros for no bias), the activation as clip bounds lo, hi. One thread's
    # loop, returns the task count.
    total = (w.shape[0] + ROWS_MR - 1) // ROWS_MR
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        _fc_block(x, w, b, lo, hi, y, t)
        task_done(counter, 1)
    return total


@njit(cache=True, nogil=True, inline="always", fastmath=True)
def _fc_block(x, w, b, lo, hi, y, t):
    # Block t of y (N, M) = clip(x (N, K) @ w (M, K)^T + b, lo, hi): ROWS_MR weight rows (the last
    # block shifted back to end at M) meet every input, k-chunk by k-chunk, while they are in L1:
    # the weights stream from memory once per batch. Inputs go two at a time, so each weight
    # vector loaded feeds two multiply-adds. fastmath lets LLVM vectorise the dot products along k
    # (the summation order differs from BLAS's).
    N, K = x.shape
    M = w.shape[0]
    j = min(t * ROWS_MR, M - ROWS_MR)
    acc = np.zeros((N, ROWS_MR), dtype=np.float32)
    for k0 in range(0, K, _KC):
        k1 = min(K, k0 + _KC)
        w0, w1, w2, w3 = w[j, k0:k1], w[j + 1, k0:k1], w[j + 2, k0:k1], w[j + 3, k0:k1]
        w4, w5, w6, w7 = w[j + 4, k0:k1], w[j + 5, k0:k1], w[j + 6, k0:k1], w[j + 7, k0:k1]
        # four inputs at a time against four rows (16 sums: each vector loaded feeds four
        # multiply-adds), then the rest in pairs against all eight rows
        n4 = N - N % 4
        for n in range(0, n4, 4):
            _quad(x, n, k0, k1, w0, w1, w2, w3, acc, 0)
            _quad(x, n, k0, k1, w4, w5, w6, w7, acc, 4)
        for n in range(n4, N - 1, 2):
            xa = x[n, k0:k1]
            xb = x[n + 1, k0:k1]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
            t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = np.float32(0.0)
            for k in range(k1 - k0):
                a = xa[k]
                c = xb[k]
                v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
                v4, v5, v6, v7 = w4[k], w5[k], w6[k], w7[k]
                s0 += v0 * a
                s1 += v1 * a
                s2 += v2 * a
                s3 += v3 * a
                s4 += v4 * a
                s5 += v5 * a
                s6 += v6 * a
                s7 += v7 * a
                t0 += v0 * c
                t1 += v1 * c
                t2 += v2 * c
                t3 += v3 * c
                t4 += v4 * c
                t5 += v5 * c
                t6 += v6 * c
                t7 += v7 * c
            _add4(acc[n], 0, s0, s1, s2, s3)
            _add4(acc[n], 4, s4, s5, s6, s7)
            _add4(acc[n + 1], 0, t0, t1, t2, t3)
            _add4(acc[n + 1], 4, t4, t5, t6, t7)
        if (N - n4) % 2:
            _dots8(x[N - 1, k0:k1], w0, w1, w2, w3, w4, w5, w6, w7, acc[N - 1])
    for r8 in range(ROWS_MR):
        bias = b[j + r8]
        for n in range(N):
            y[n, j + r8] = min(max(acc[n, r8] + bias, lo), hi)


@njit(cache=True, nogil=True)
def _pack_columns_worker(x, kc, bp, counter):
    # x: (N, K) -> bp: x^T as the 1x1 GEMM's B operand (minicaffe.simd.indirect_tile), chunk of kc
    # rows of K by chunk: chunk c (rows k0 = c*kc .. k1) holds its panels of NR inputs, each
    # (k1 - k0) x NR row-major, zeros past N; chunks follow one another in bp. Tasks (chunk, panel)
    # from counter[0] (counted in counter[1]); one thread's loop, returns the task count.
    N, K = x.shape
    P = (N + NR - 1) // NR
    C = (K + kc - 1) // kc
    total = C * P
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        c = t // P
        p = t - c * P
        k0 = c * kc
        k1 = min(K, k0 + kc)
        base = k0 * P * NR + p * (k1 - k0) * NR
        n1 = min(NR, N - p * NR)
        for kk in range(k1 - k0):
            row = bp[base + kk * NR:base + (kk + 1) * NR]
            for j in range(n1):
                row[j] = x[p * NR + j, k0 + kk]
            for j in range(n1, NR):
                row[j] = np.float32(0.0)
        task_done(counter, 1)
    return total


@njit(cache=True, nogil=True)
def _bias_transpose_worker(yt, b, lo, hi, y, counter):
    # yt: (M, N) -> y: (N, M) = clip(yt^T + b, lo, hi) in blocks of 32 x 32 (both sides read and
    # written a cache line at a time); tasks: blocks from counter[0] (counted in counter[1]); one
    # thread's loop, returns the task count
    M, N = yt.shape
    nbm = (M + 31) // 32
    total = nbm * ((N + 31) // 32)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        m0 = (t % nbm) * 32
        n0 = (t // nbm) * 32
        for n in range(n0, min(N, n0 + 32)):
            for m in range(m0, min(M, m0 + 32)):
                y[n, m] = min(max(yt[m, n] + b[m], lo), hi)
        task_done(counter, 1)
    return total


@njit(parallel=True, cache=True, nogil=True)
def _bias_transpose(yt, b, lo, hi, workers, counter, y):
    # _bias_transpose_worker on ``workers`` threads (counter: int64[2] zeros)
    for _w in prange(workers):
        _bias_transpose_worker(yt, b, lo, hi, y, counter)


def inner_product_rows_cpu(x, w, b, transpose=False, relu=False, relu_cap=None):
    """Same contract as :func:`inner_product_reference` (``transpose=False`` and M >= 8 only):
    every block of weight rows meets all N inputs while it is in cache, so the weights stream from
    memory once per call. For small batches, where BLAS would pack (copy) the whole weight matrix
    per call, this is faster."""
    if transpose or w.shape[0] < ROWS_MR:
        raise ValueError(f"inner_product_rows_cpu takes (M, K) weights with M >= {ROWS_MR}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    y = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    has_bias = b is not None
    _fc_rows(x, w, b if has_bias else np.zeros(1, np.float32), has_bias, relu, fused_cap(relu_cap), y)
    return y


#: largest batch that :func:`inner_product_cpu` sends to :func:`inner_product_rows_cpu` (beyond,
#: BLAS's packed GEMM amortises its copy of the weights)
ROWS_MAX_BATCH = 16


def inner_product_cpu(x, w, b, transpose=False, relu=False, relu_cap=None):
    """Same contract as :func:`inner_product_reference` (``relu=True``: max(0, .) applied with the
    bias, the fused in-place ReLU)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not transpose and x.shape[0] <= ROWS_MAX_BATCH and w.shape[0] >= ROWS_MR:
        return inner_product_rows_cpu(x, w, b, relu=relu, relu_cap=relu_cap)
    if transpose:
        y = np.matmul(x, w)    # (N, K) x (K, M)
        if b is not None or relu:
            _add_bias_rows(y, b if b is not None else np.zeros(1, np.float32), b is not None, relu,
                           fused_cap(relu_cap))
        return y
    # (M, K) x (K, N): the weights as BLAS's row-major left operand (x @ w.T makes BLAS repack its
    # transposed right operand), then one pass writes y (N, M) = the transpose + bias + activation
    yt = np.matmul(w, x.T)
    y = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    _bias_transpose(yt, b if b is not None else np.zeros(w.shape[0], np.float32), *clip_bounds(relu, relu_cap),
                    numba.get_num_threads(), np.zeros(2, np.int64), y)
    return y


TILE = 16


@cuda.jit
def _matmul_bt_kernel(x, w, b, y):
    # y[n, m] = sum_k x[n, k] * w[m, k] + b[m]; tiles of x and w staged through shared memory
    sx = cuda.shared.array((TILE, TILE), dtype=float32)
    sw = cuda.shared.array((TILE, TILE), dtype=float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    m = cuda.blockIdx.x * TILE + tx
    n = cuda.blockIdx.y * TILE + ty
    N, K = x.shape
    M = w.shape[0]
    acc = float32(0.0)
    for t in range((K + TILE - 1) // TILE):
        k = t * TILE + tx
        sx[ty, tx] = x[n, k] if (n < N and k < K) else 0.0
        mw = cuda.blockIdx.x * TILE + ty
        k2 = t * TILE + tx
        sw[ty, tx] = w[mw, k2] if (mw < M and k2 < K) else 0.0
        cuda.syncthreads()
        for i in range(TILE):
            acc += sx[ty, i] * sw[tx, i]
        cuda.syncthreads()
    if n < N and m < M:
        y[n, m] = acc + b[m]


def inner_product_cuda(x, w, b, transpose=False):
    """x: device (N, K), w: device (M, K) -> device (N, M)."""
    if transpose:
        w = to_device(np.ascontiguousarray(w.copy_to_host().T))
    N, K = x.shape
    M = w.shape[0]
    if b is None:
        b = to_device(np.zeros(M, np.float32))
    y = device_empty((N, M))
    grid = ((M + TILE - 1) // TILE, (N + TILE - 1) // TILE)
    _matmul_bt_kernel[grid, (TILE, TILE)](x, w, b, y)
    return y


@register("InnerProduct")
class InnerProduct(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("inner_product_param")
        self.num_output = p.get("num_output")
        if not isinstance(self.num_output, int) or self.num_output < 1:
            raise self.err("inner_product_param.num_output must be a positive integer")
        self.bias_term = as_bool(p.get("bias_term"), True)
        self.transpose = as_bool(p.get("transpose"), False)
        self.axis = p.get("axis", 1)

    def setup(self, shapes):
        shp = tuple(shapes[0])
        ax = self.axis if self.axis >= 0 else len(shp) + self.axis
        if not 0 < ax <= len(shp):
            raise self.err(f"axis {self.axis} out of range for input shape {shp}")
        self._ax = ax
        K = int(np.prod(shp[ax:]))
        self.K = K
        self.param_shapes = [(K, self.num_output) if self.transpose else (self.num_output, K)]
        if self.bias_term:
            self.param_shapes.append((self.num_output,))
        return [shp[:ax] + (self.num_output,)]

    def flops(self, bshapes, tshapes):
        return 2 * int(np.prod(tshapes[0])) * self.K

    #: the cpu kernels can apply a following in-place ReLU with the bias (``relu=True``)
    fuses_relu = True

    def forward(self, bottoms, params, backend, inplace=False, relu=False, relu_cap=None):
        x = bottoms[0]
        lead = tuple(x.shape[:self._ax])
        x2 = x.reshape(int(np.prod(lead)), -1)  # row-major flatten of (C, H, W): Caffe's order
        b = params[1] if self.bias_term else None
        if backend == "cpu":
            y = inner_product_cpu(x2, params[0], b, self.transpose, relu, relu_cap)
        elif relu:
            raise ValueError(f"the {backend} backend does not fuse ReLU")
        else:
            f = {"numpy": inner_product_reference, "cuda": inner_product_cuda}[backend]
            y = f(x2, params[0], b, self.transpose)
        return [y.reshape(lead + (self.num_output,))]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _inner_product_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training)


def inner_product_backward_reference(dy, x, w, transpose=False):
    """dy: (N, M), x: (N, K), w: (M, K) (or (K, M) if transpose) -> (dx (N, K), dw like w, db (M,)).

    Keeps the inputs' dtype (float64 in finite-difference checks)."""
    if transpose:
        return dy @ w.T, x.T @ dy, dy.sum(axis=0)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def inner_product_backward_cpu(dy, x, w, transpose=False):
    """Same contract as :func:`inner_product_backward_reference`, float32: the products are BLAS
    GEMMs through NumPy (nothing a Numba loop would do faster)."""
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if transpose:
        dx, dw = np.matmul(dy, w.T), np.matmul(x.T, dy)
    else:
        dx, dw = np.matmul(dy, w), np.matmul(dy.T, x)
    return dx, dw, dy.sum(axis=0, dtype=np.float64).astype(np.float32)


def _inner_product_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    x = bottoms[0]
    lead = tuple(x.shape[:self._ax])
    n = int(np.prod(lead))
    f = self.backend_kernel(backend, "backward", numpy=inner_product_backward_reference, cpu=inner_product_backward_cpu)
    # the same row-major flatten as the forward: (C, H, W) order
    dx, dw, db = f(top_diffs[0].reshape(n, -1), x.reshape(n, -1), params[0], self.transpose)
    return [dx.reshape(x.shape)], ([dw, db] if self.bias_term else [dw])


