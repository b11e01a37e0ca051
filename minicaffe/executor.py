"""Run a sequence of channels-last kernels on all threads in one go.

A :class:`Program` holds kernels (the task loops of
:mod:`minicaffe.layers.convolution.nhwc_kernels`, global pooling, softmax) with their arguments as
rows of integers that index its arrays. :meth:`Program.run` calls one Numba function,
:func:`_program_worker`, on every thread (:func:`minicaffe.threads.run_on_threads`): each thread
takes tasks of kernel k from k's counter, then waits until all of k's tasks are *done* (counted as
they finish) and moves on to kernel k + 1. A thread that has not started is never waited for (the
others take its tasks), the threads are woken once per run, not once per kernel, and no Python
runs between kernels. A convolution layer's kernels form a small program
(:mod:`minicaffe.layers.convolution.nhwc`); a whole net's, one (:mod:`minicaffe.program`).

Arrays are held flat (float32 in ``F``, read-only int64 in ``I``); named slots are arrays the caller
supplies at every run (a layer's input and output).
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.typed import List

from .layers.convolution.nhwc_kernels import _block_worker, _dw_padded_worker, _gemm_worker, _pad_worker
from .layers.pooling import _global_pool_worker
from .layers.softmax import _softmax_worker
from .simd import view, wait_count
from .threads import run_on_threads

OP_PAD, OP_GEMM, OP_DW, OP_BLOCK, OP_POOL, OP_SOFTMAX = range(6)
#: int64 slots per op row
NI = 32


# One function per kernel kind, all of one signature (F, I, o, fp, c): o one ops row, fp its clip
# bounds, c its counters -> the kernel's task count, run on this thread.

@njit(cache=True, nogil=True)
def _op_pad(F, I, o, fp, c):
    # x, xp, nchw, N, C, H, W, Hp, Wp, pt, pl
    N, C, H, W, Hp, Wp = o[4], o[5], o[6], o[7], o[8], o[9]
    if o[3] == 1:
        x4 = view(F[o[1]], (N, C, H, W))
    else:
        x4 = view(F[o[1]], (N, H, W, C))
    return _pad_worker(x4, o[3] == 1, o[10], o[11], view(F[o[2]], (N, Hp, Wp, C)), c)


@njit(cache=True, nogil=True)
def _op_gemm(F, I, o, fp, c):
    # x, bp, b, y, res (-1: none), offs, geo, panels, panel size
    yf = F[o[4]]
    res = F[o[5]] if o[5] >= 0 else yf
    return _gemm_worker(F[o[1]], I[o[6]], view(F[o[2]], (o[8], o[9])), F[o[3]], fp[0], fp[1], I[o[7]], c, yf, res,
                        o[5] >= 0)


@njit(cache=True, nogil=True)
def _op_dw(F, I, o, fp, c):
    # xp, wt, bd, y, N, Hp, Wp, C, Ho, Wo, kh, kw, sh, sw, rows, cg
    N, Hp, Wp, C, Ho, Wo, kh, kw = o[5], o[6], o[7], o[8], o[9], o[10], o[11], o[12]
    return _dw_padded_worker(view(F[o[1]], (N, Hp, Wp, C)), view(F[o[2]], (kh, kw, C)), F[o[3]], o[13], o[14], fp[0],
                             fp[1], o[15], o[16], c, view(F[o[4]], (N, Ho, Wo, C)))


@njit(cache=True, nogil=True)
def _op_block(F, I, o, fp, c):
    # x, bp_e, be, wt, bd, bp_p, bpp, y, offs_e, offs_p, has_expand, has_project, residual,
    # N, H, W, Cin, Ho, Wo, Cout, kh, kw, Ce, Pe, Pp, sh, sw, pt, pl, band, chunk
    N, H, W, Cin, Ho, Wo, Cout = o[14], o[15], o[16], o[17], o[18], o[19], o[20]
    kh, kw, Ce, Pe, Pp = o[21], o[22], o[23], o[24], o[25]
    return _block_worker(view(F[o[1]], (N, H, W, Cin)), o[11] == 1, I[o[9]], view(F[o[2]], (Pe, F[o[2]].size // Pe)),
                         F[o[3]], fp[0], fp[1], view(F[o[4]], (kh, kw, Ce)), F[o[5]], o[26], o[27], o[28], o[29],
                         fp[2], fp[3], o[12] == 1, I[o[10]], view(F[o[6]], (Pp, F[o[6]].size // Pp)), F[o[7]],
                         o[13] == 1, o[30], o[31], c, view(F[o[8]], (N, Ho, Wo, Cout)))


@njit(cache=True, nogil=True)
def _op_pool(F, I, o, fp, c):
    # x, y, N, P, C, method
    N, P, C = o[3], o[4], o[5]
    return _global_pool_worker(view(F[o[1]], (N, P, C)), o[6], view(F[o[2]], (N, C)), c)


@njit(cache=True, nogil=True)
def _op_softmax(F, I, o, fp, c):
    # x, y, outer, C, inner
    O, C, In = o[3], o[4], o[5]
    return _softmax_worker(view(F[o[1]], (O, C, In)), view(F[o[2]], (O, C, In)), c)


@njit(cache=True, nogil=True)
def _program_worker(F, I, ops, fpar, counters):
    # one thread's walk through the ops: F: float32 1-D arrays, I: int64 1-D arrays (read-only),
    # ops: (n, NI) int64 rows (kind, indices into F / I, sizes), fpar: (n, 4) float32 clip bounds,
    # counters: (n, 2) int64 zeros (tasks taken, tasks done). Every _op_* is called from two
    # places: with one call site LLVM inlines them all here, and the kernels' tile loops, compiled
    # inside one function that large, run 10-30% slower (the second calls, for an empty table,
    # never run).
    if ops.shape[0] == 0:
        o, fp, c = ops[0], fpar[0], counters[0]
        _op_pad(F, I, o, fp, c)
        _op_gemm(F, I, o, fp, c)
        _op_dw(F, I, o, fp, c)
        _op_block(F, I, o, fp, c)
        _op_pool(F, I, o, fp, c)
        _op_softmax(F, I, o, fp, c)
    for k in range(ops.shape[0]):
        o, fp, c = ops[k], fpar[k], counters[k]
        kind = o[0]
        if kind == OP_PAD:
            total = _op_pad(F, I, o, fp, c)
        elif kind == OP_GEMM:
            total = _op_gemm(F, I, o, fp, c)
        elif kind == OP_DW:
            total = _op_dw(F, I, o, fp, c)
        elif kind == OP_BLOCK:
            total = _op_block(F, I, o, fp, c)
        elif kind == OP_POOL:
            total = _op_pool(F, I, o, fp, c)
        else:
            total = _op_softmax(F, I, o, fp, c)
        wait_count(c, 1, total)


class Program:
    """Kernels and their arrays (see the module docstring). Build with :meth:`slot`, :meth:`f`,
    :meth:`i`, :meth:`op` / :meth:`emit`, then :meth:`finish`; run with :meth:`run`."""

    def __init__(self):
        self.F, self.I = [], []
        self._fids = {}
        self.rows, self.fpar = [], []
        self.slots = {}
        self._keep = []          # the arrays indexed by id: alive, so no other array takes their id

    # -- building
    def slot(self, name):
        """An array the caller passes to every :meth:`run` as ``name`` -> its F index."""
        idx = self.f(np.empty(1, dtype=np.float32))
        self.slots[name] = idx
        return idx

    def f(self, a):
        """F index of the float32 C-contiguous array ``a`` (one index per array object; a read-only
        array is copied, the kernels' arrays being writeable)."""
        key = id(a)
        if key not in self._fids:
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"a program array must be contiguous float32, not {a.dtype} {a.shape}")
            self._fids[key] = len(self.F)
            self.F.append((a if a.flags.writeable else a.copy()).reshape(a.size))
            self._keep.append(a)
        return self._fids[key]

    def i(self, a):
        self.I.append(np.array(a, dtype=np.int64).reshape(-1))
        return len(self.I) - 1

    def op(self, ints, lo=-np.inf, hi=np.inf, lo2=-np.inf, hi2=np.inf):
        row = np.zeros(NI, dtype=np.int64)
        row[:len(ints)] = ints
        self.rows.append(row)
        self.fpar.append((lo, hi, lo2, hi2))

    def emit(self, ops, x_idx, in_shape, y_idx, out_shape):
        """A channels-last runner's kernel list (:func:`minicaffe.layers.convolution.nhwc._ops`) with
        its "in" / "out" arrays at F indices x_idx (an (N, C, H, W) blob's array, NCHW or its
        channels-last memory) and y_idx (an (N, Ho, Wo, M) channels-last array; ``out_shape`` is
        the blob's (N, M, Ho, Wo))."""
        N, M, Ho, Wo = out_shape
        out4 = (N, Ho, Wo, M)

        def at(a):
            return (x_idx if a == "in" else y_idx) if isinstance(a, str) else self.f(a)

        for kind, args in ops:
            if kind == "pad":
                x, nchw, pt, pl, xp = args
                Np, Hp, Wp, C = xp.shape
                self.op([OP_PAD, at(x), self.f(xp), int(nchw), Np, C, in_shape[2], in_shape[3], Hp, Wp, pt, pl])
            elif kind == "gemm":
                x, (offs, bp, b, lo, hi, geo, _workers), y, res = args
                self.op([OP_GEMM, at(x), self.f(bp), self.f(b), at(y), -1 if res is None else at(res), self.i(offs),
                         self.i(geo), bp.shape[0], bp.shape[1]], lo, hi)
            elif kind == "dw":
                xp, (wt, bd, sh, sw, lo, hi, rows, cg, _workers), y = args
                Np, Hp, Wp, C = xp.shape
                _, yh, yw, _ = out4 if isinstance(y, str) else y.shape
                kh, kw = wt.shape[:2]
                self.op([OP_DW, self.f(xp), self.f(wt), self.f(bd), at(y), Np, Hp, Wp, C, yh, yw, kh, kw, sh, sw, rows,
                         cg], lo, hi)
            elif kind == "block":
                x, a, y = args
                (has_e, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_p, offs_p, bp_p, bpp,
                 residual, band, chunk, _workers) = a
                kh, kw, Ce = wt.shape
                self.op([OP_BLOCK, at(x), self.f(bp_e), self.f(be), self.f(wt), self.f(bd), self.f(bp_p), self.f(bpp),
                         at(y), self.i(offs_e), self.i(offs_p), int(has_e), int(has_p), int(residual), N,
                         in_shape[2], in_shape[3], in_shape[1], Ho, Wo, M, kh, kw, Ce, bp_e.shape[0], bp_p.shape[0],
                         sh, sw, pt, pl, band, chunk], elo, ehi, dlo, dhi)
            else:
                raise ValueError(f"unknown kernel {kind!r}")

    def finish(self, workers):
        """Freeze the tables; ``workers``: the threads :meth:`run` uses (1: the caller alone)."""
        self.Fl = List(self.F)
        self.Il = List()
        for a in self.I or [np.zeros(1, dtype=np.int64)]:       # typed even when no kernel has one
            a.setflags(write=False)
            self.Il.append(a)
        self.ops = np.array(self.rows, dtype=np.int64).reshape(-1, NI)
        self.fp = np.array(self.fpar, dtype=np.float32).reshape(-1, 4)
        self.counters = np.zeros((len(self.rows), 2), dtype=np.int64)
        self.workers = workers
        return self

    # -- running
    def run(self, **arrays):
        """Run every kernel with the slots' arrays (C-contiguous float32, any shape of the right
        size) given by name."""
        for name, a in arrays.items():
            self.Fl[self.slots[name]] = a.reshape(a.size)
        self.counters[:] = 0
        run_on_threads(_program_worker, (self.Fl, self.Il, self.ops, self.fp, self.counters), self.workers)
