"""Run a sequence of kernels on all threads in one go.

A :class:`Program` holds kernels (the task loops of
:mod:`minicaffe.layers.convolution.nhwc_kernels`, of the Winograd transforms and products, of
windowed and global pooling (with a following LRN), of the inner products and softmax) with their
arguments as rows of integers that index its arrays. :meth:`Program.run` runs one compiled C
function, :func:`_program`, on the calling thread and the helper threads of
:mod:`minicaffe.threads`: each thread takes tasks of kernel k from k's counter, then waits until
all of k's tasks are *done* (counted as they finish) and moves on to kernel k + 1. A thread that
has not started is never waited for (the others take its tasks), the threads are woken once per
run, not once per kernel, and no Python runs between kernels. A convolution layer's kernels form a
small program (:mod:`minicaffe.layers.convolution.nhwc`); a whole net's, one
(:mod:`minicaffe.program`). The kernels of NCHW-born nets (CaffeNet) sit in a second C function,
:func:`_more_kernels`, that :func:`_program` calls through its address: compiled only for programs
that use them.

The kernels get their arrays from tables of addresses and sizes (float32 arrays, int64 arrays):
the program holds the arrays; named slots are arrays the caller supplies at every run (a layer's
input and output). The arrays the kernels write share one arena planned from their live ranges,
and the arena and the other arrays (weights; not those used in place, an inner product's) sit in
one buffer on huge pages.
"""
from __future__ import annotations

import functools
import mmap

import numpy as np
from numba import cfunc, njit, types

from .layers.convolution.nhwc_kernels import _block_worker, _dw_padded_worker, _gemm_worker, _pad_worker
from .layers.convolution.winograd import _winograd_gemms_worker, _winograd_input_worker, _winograd_output_worker
from .layers.inner_product import _bias_transpose_worker, _fc_rows_worker, _pack_columns_worker
from .layers.pooling import _global_pool_worker, _pool_nhwc_worker
from .layers.softmax import _softmax_worker
from .simd import at_address, cycles, fetch_add, wait_count
from .threads import CTL_SIZE, MAIL, call_kernel, pool

(OP_PAD, OP_GEMM, OP_DW, OP_BLOCK, OP_POOL, OP_SOFTMAX, OP_WPOOL, OP_WIN_IN, OP_WIN_GEMM, OP_WIN_OUT, OP_FC, OP_PACKT,
 OP_BIAST) = range(13)
#: the kernels' names, by kind
OP_NAMES = ("pad", "gemm", "dw", "block", "pool", "softmax", "window-pool", "winograd-in", "winograd-gemm",
            "winograd-out", "fc", "pack-columns", "bias-transpose")
#: int64 slots per op row
NI = 32
#: int64 values of a program's mailbox (at the pool's ctl[MAIL:])
MAIL_SIZE = 13


@njit(cache=True, nogil=True, inline="always")
def _f(FP, FS, i):
    # float32 array i of the program, flat
    return at_address(FP[i], (FS[i],), np.float32)


@njit(cache=True, nogil=True, inline="always")
def _i(IP, IS, i):
    # int64 array i of the program
    return at_address(IP[i], (IS[i],), np.int64)


@njit(cache=True, nogil=True, inline="always")
def _tables(ctl_address):
    # a program's tables, from the mailbox of the pool's ``ctl`` (at ctl_address); see _program
    ctl = at_address(ctl_address, (CTL_SIZE,), np.int64)
    m = ctl[MAIL:MAIL + MAIL_SIZE]
    n = m[7]
    FP, FS = at_address(m[0], (m[1],), np.int64), at_address(m[2], (m[1],), np.int64)
    IP, IS = at_address(m[3], (m[4],), np.int64), at_address(m[5], (m[4],), np.int64)
    ops, fpar = at_address(m[6], (n, NI), np.int64), at_address(m[8], (n, 4), np.float32)
    counters = at_address(m[9], (n + 1, 2), np.int64)
    return m, n, FP, FS, IP, IS, ops, fpar, counters


def _program(ctl_address):
    # One thread's walk through the ops (compiled as a C function: :func:`_program_address`). Its
    # arrays come from the mailbox of the pool's ``ctl`` (at ctl_address): FP, FS: the float32
    # arrays' addresses and sizes, IP, IS: the int64 arrays'; ops: (n, NI) int64 rows (kind, array
    # numbers, sizes); fpar: (n, 4) float32 clip bounds; counters: (n + 1, 2) int64 zeros (tasks
    # taken, tasks done; the last row numbers the threads); clock: (T, n + 1, 2) int64, the first T
    # threads' time stamps (T = 0: none); the address of :func:`_more_kernels` (0: none used).
    # at_address(FP[i], shape, np.float32) is float32 array i in a kernel's shape. Each kernel is
    # called from a second place too (never run: an empty table): with one call site LLVM inlines
    # all of them here, and their tile loops, compiled inside one function that large, run 10-30%
    # slower.
    m, n, FP, FS, IP, IS, ops, fpar, counters = _tables(ctl_address)
    clock = at_address(m[10], (m[11], n + 1, 2), np.int64)
    f32 = np.float32
    tid = fetch_add(counters[n], 0, 1)
    timed = tid < clock.shape[0]
    if timed:
        clock[tid, 0, 0] = cycles()
    if n == 0:
        # the same argument types as below (run-time values, not literals: no other specialisation)
        zb, zf = n == 1, f32(n)
        z1, z2, z3 = at_address(FP[n], (n,), f32), at_address(FP[n], (n, n), f32), at_address(FP[n], (n, n, n), f32)
        z4, i1, c0 = at_address(FP[n], (n, n, n, n), f32), _i(IP, IS, n), counters[n]
        _pad_worker(z4, zb, n, n, z4, c0)
        _gemm_worker(z1, i1, z2, z1, zf, zf, i1, c0, z1, z1, zb)
        _dw_padded_worker(z4, z3, z1, n, n, zf, zf, n, n, c0, z4)
        _block_worker(z4, zb, i1, z2, z1, zf, zf, z3, z1, n, n, n, n, zf, zf, zb, i1, z2, z1, zb, n, n, c0, z4)
        _global_pool_worker(z3, n, z2, c0)
        _softmax_worker(z3, z3, c0)
    for k in range(n):
        o, fp, c = ops[k], fpar[k], counters[k]
        kind = o[0]
        if kind == OP_PAD:
            # x, xp, nchw, N, C, H, W, Hp, Wp, pt, pl, the first float of x read (a chunk's images)
            N, C, H, W, Hp, Wp = o[4], o[5], o[6], o[7], o[8], o[9]
            if o[3] == 1:
                x4 = at_address(FP[o[1]] + 4 * o[12], (N, C, H, W), f32)
            else:
                x4 = at_address(FP[o[1]] + 4 * o[12], (N, H, W, C), f32)
            total = _pad_worker(x4, o[3] == 1, o[10], o[11], at_address(FP[o[2]], (N, Hp, Wp, C), f32), c)
        elif kind == OP_GEMM:
            # x, bp, b, y, res (-1: none), offs, geo, panels, panel size, first float of bp's panels
            yf = _f(FP, FS, o[4])
            res = _f(FP, FS, o[5]) if o[5] >= 0 else yf
            total = _gemm_worker(_f(FP, FS, o[1]), _i(IP, IS, o[6]),
                                 at_address(FP[o[2]] + 4 * o[10], (o[8], o[9]), f32),
                                 _f(FP, FS, o[3]), fp[0], fp[1], _i(IP, IS, o[7]), c, yf, res, o[5] >= 0)
        elif kind == OP_DW:
            # xp, wt, bd, y, N, Hp, Wp, C, Ho, Wo, kh, kw, sh, sw, rows, cg
            N, Hp, Wp, C, Ho, Wo, kh, kw = o[5], o[6], o[7], o[8], o[9], o[10], o[11], o[12]
            total = _dw_padded_worker(at_address(FP[o[1]], (N, Hp, Wp, C), f32), at_address(FP[o[2]], (kh, kw, C), f32),
                                      _f(FP, FS, o[3]), o[13], o[14], fp[0], fp[1], o[15], o[16], c,
                                      at_address(FP[o[4]], (N, Ho, Wo, C), f32))
        elif kind == OP_BLOCK:
            # x, bp_e, be, wt, bd, bp_p, bpp, y, offs_e, offs_p, has_expand, has_project, residual,
            # N, H, W, Cin, Ho, Wo, Cout, kh, kw, Ce, Pe, Pp, sh, sw, pt, pl, band, nchunks
            N, H, W, Cin, Ho, Wo, Cout = o[14], o[15], o[16], o[17], o[18], o[19], o[20]
            kh, kw, Ce, Pe, Pp = o[21], o[22], o[23], o[24], o[25]
            total = _block_worker(at_address(FP[o[1]], (N, H, W, Cin), f32), o[11] == 1, _i(IP, IS, o[9]),
                                  at_address(FP[o[2]], (Pe, FS[o[2]] // Pe), f32), _f(FP, FS, o[3]), fp[0], fp[1],
                                  at_address(FP[o[4]], (kh, kw, Ce), f32), _f(FP, FS, o[5]), o[26], o[27], o[28],
                                  o[29], fp[2], fp[3], o[12] == 1, _i(IP, IS, o[10]),
                                  at_address(FP[o[6]], (Pp, FS[o[6]] // Pp), f32), _f(FP, FS, o[7]), o[13] == 1,
                                  o[30], o[31], c, at_address(FP[o[8]], (N, Ho, Wo, Cout), f32))
        elif kind == OP_POOL:
            # x, y, N, P, C, method
            N, P, C = o[3], o[4], o[5]
            total = _global_pool_worker(at_address(FP[o[1]], (N, P, C), f32), o[6], at_address(FP[o[2]], (N, C), f32),
                                        c)
        elif kind == OP_SOFTMAX:
            # x, y, outer, C, inner
            O, C, In = o[3], o[4], o[5]
            total = _softmax_worker(at_address(FP[o[1]], (O, C, In), f32), at_address(FP[o[2]], (O, C, In), f32), c)
        else:
            # the kernels of NCHW-born nets (CaffeNet): in their own C function (compiled only for
            # a program that has them)
            total = call_kernel(m[12], ctl_address, k)
        if timed:
            clock[tid, k + 1, 0] = cycles()
        wait_count(c, 1, total)
        if timed:
            clock[tid, k + 1, 1] = cycles()


def _more_kernels(ctl_address, k):
    # Kernel k of the program in the mailbox at ctl_address (see _program), one of the kinds
    # from OP_WPOOL on, on this thread -> its task count (compiled as a C function:
    # :func:`_more_kernels_address`). k < 0: never run (each kernel's second call site, as in
    # _program).
    m, n, FP, FS, IP, IS, ops, fpar, counters = _tables(ctl_address)
    f32 = np.float32
    if k < 0:
        zf = f32(n)
        z1, z2 = at_address(FP[n], (n,), f32), at_address(FP[n], (n, n), f32)
        z4, i1, c0 = at_address(FP[n], (n, n, n, n), f32), _i(IP, IS, n), counters[n]
        _pool_nhwc_worker(z4, n, n, n, n, n, n, n, z1, z1, i1, c0)
        _winograd_input_worker(z4, n, n, n, n, n, c0, z4)
        _winograd_gemms_worker(z4, z4, i1, c0, z4)
        _winograd_output_worker(z4, z1, zf, zf, n, n, n, i1, c0, z1)
        _fc_rows_worker(z2, z2, z1, zf, zf, z2, c0)
        _pack_columns_worker(z2, n, z1, c0)
        _bias_transpose_worker(z2, z1, zf, zf, z2, c0)
    o, fp, c = ops[k], fpar[k], counters[k]
    kind = o[0]
    if kind == OP_WPOOL:
        # x, y, N, H, W, C, method, kh, kw, sh, sw, ph, pw, geo, lrn
        N, H, W, C = o[3], o[4], o[5], o[6]
        total = _pool_nhwc_worker(at_address(FP[o[1]], (N, H, W, C), f32), o[7], o[8], o[9], o[10], o[11], o[12],
                                  o[13], _f(FP, FS, o[15]), _f(FP, FS, o[2]), _i(IP, IS, o[14]), c)
    elif kind == OP_WIN_IN:
        # xt, V, N, Hp, Wp, C, G, ks, th, tw, R, K
        N, G, R = o[3], o[7], o[11]
        total = _winograd_input_worker(at_address(FP[o[1]], (N, o[4], o[5], o[6]), f32), N, G, o[8], o[9], o[10],
                                       c, at_address(FP[o[2]], (36, G, R, o[12]), f32))
    elif kind == OP_WIN_GEMM:
        # V, Up, offs, Mt, G, R, K, P, Mg
        G, R, K = o[5], o[6], o[7]
        total = _winograd_gemms_worker(at_address(FP[o[1]], (36, G, R, K), f32),
                                       at_address(FP[o[2]], (36, G, o[8], FS[o[2]] // (36 * G * o[8])), f32),
                                       _i(IP, IS, o[3]), c, at_address(FP[o[4]], (36, G, R, o[9]), f32))
    elif kind == OP_WIN_OUT:
        # Mt, b, y, geo, N, th, tw, G, R, Mg, the first float of y written (a chunk's images)
        total = _winograd_output_worker(at_address(FP[o[1]], (36, o[8], o[9], o[10]), f32), _f(FP, FS, o[2]),
                                        fp[0], fp[1], o[5], o[6], o[7], _i(IP, IS, o[4]), c,
                                        at_address(FP[o[3]] + 4 * o[11], (FS[o[3]] - o[11],), f32))
    elif kind == OP_PACKT:
        # x, bp, N, K, kc
        total = _pack_columns_worker(at_address(FP[o[1]], (o[3], o[4]), f32), o[5], _f(FP, FS, o[2]), c)
    elif kind == OP_BIAST:
        # yt, b, y, M, N
        M, N = o[4], o[5]
        total = _bias_transpose_worker(at_address(FP[o[1]], (M, N), f32), _f(FP, FS, o[2]), fp[0], fp[1],
                                       at_address(FP[o[3]], (N, M), f32), c)
    else:
        # OP_FC: x, w, b, y, N, K, M
        N, K, M = o[5], o[6], o[7]
        total = _fc_rows_worker(at_address(FP[o[1]], (N, K), f32), at_address(FP[o[2]], (M, K), f32),
                                _f(FP, FS, o[3]), fp[0], fp[1], at_address(FP[o[4]], (N, M), f32), c)
    return total


#: the row positions of the arrays each kind of kernel writes and reads
_WRITES = {OP_PAD: (2,), OP_GEMM: (4,), OP_DW: (4,), OP_BLOCK: (8,), OP_POOL: (2,), OP_SOFTMAX: (2,), OP_WPOOL: (2,),
           OP_WIN_IN: (2,), OP_WIN_GEMM: (4,), OP_WIN_OUT: (3,), OP_FC: (4,), OP_PACKT: (2,), OP_BIAST: (3,)}
_READS = {OP_PAD: (1,), OP_GEMM: (1, 2, 5), OP_DW: (1,), OP_BLOCK: (1,), OP_POOL: (1,), OP_SOFTMAX: (1,),
          OP_WPOOL: (1,), OP_WIN_IN: (1,), OP_WIN_GEMM: (1,), OP_WIN_OUT: (1,), OP_FC: (1,), OP_PACKT: (1,),
          OP_BIAST: (1,)}


def _huge_zeros(n):
    """A zeroed float32 array of n elements in its own anonymous mapping, 2 MB-aligned and advised
    as huge pages where the kernel offers them (a forward then walks a few page-table entries for
    its weights instead of thousands)."""
    huge = 2 << 20
    nbytes = -(-max(n * 4, 1) // huge) * huge
    mm = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # private: THP applies
    raw = np.frombuffer(mm, dtype=np.uint8)            # keeps the mapping alive
    start = (-raw.ctypes.data) % huge
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        mm.madvise(mmap.MADV_HUGEPAGE, start, nbytes)
    return raw[start:start + n * 4].view(np.float32)


#: arena offsets are multiples of this many floats (a cache line)
ALIGN = 16


def plan_arena(sizes, lives):
    """sizes: floats of each array, lives: (first, last) kernel of each (inclusive) -> (offsets,
    arena size): arrays whose lives overlap get disjoint ranges. Largest first, each at the lowest
    aligned offset clear of those placed whose lives overlap its own (the greedy-by-size plan of
    inference runtimes' memory planners): the activations of a forward share a few buffers, so a
    kernel writes into memory the previous kernels just used (in cache) rather than into memory
    last touched a forward ago."""
    order = sorted(range(len(sizes)), key=lambda j: -sizes[j])
    placed = []                      # (offset, end, first, last)
    offs = [0] * len(sizes)
    for j in order:
        n = -(-sizes[j] // ALIGN) * ALIGN
        f, l = lives[j]
        busy = sorted((o, e) for o, e, pf, pl in placed if pf <= l and f <= pl)
        at = 0
        for o, e in busy:
            if at + n <= o:
                break
            at = max(at, e)
        offs[j] = at
        placed.append((at, at + n, f, l))
    return offs, max((e for _, e, _, _ in placed), default=0)


@functools.cache
def _more_kernels_address():
    """The address of :func:`_more_kernels` compiled as ``int64 f(int64, int64)``."""
    return cfunc(types.int64(types.int64, types.int64), cache=True, nogil=True,
                 error_model="numpy")(_more_kernels).address


@functools.cache
def _program_address():
    """The address of :func:`_program` compiled as ``void f(int64)`` (compiled, or read from
    Numba's cache, on first use)."""
    return cfunc(types.void(types.int64), cache=True, nogil=True, error_model="numpy")(_program).address


class Program:
    """Kernels and their arrays (see the module docstring). Build with :meth:`slot`, :meth:`f`,
    :meth:`i`, :meth:`op` / :meth:`emit`, then :meth:`finish`; run with :meth:`run`."""

    def __init__(self):
        self.F, self.I = [], []
        self._fids = {}
        self.rows, self.fpar = [], []
        self.slots = {}
        self._keep = []          # the arrays indexed by id: alive, so no other array takes their id
        self._shared = set()     # F indices of arrays used in place (Program.f(shared=True))

    # -- building
    def slot(self, name):
        """An array the caller passes to every :meth:`run` as ``name`` -> its F index."""
        idx = self.f(np.empty(1, dtype=np.float32))
        self.slots[name] = idx
        return idx

    def f(self, a, shared=False):
        """F index of the float32 C-contiguous array ``a`` (one index per array object; a read-only
        array is copied, the kernels' arrays being writeable). ``shared``: an array the kernels
        only read, used where it is (never copied, nor packed with the others: an inner
        product's 100 MB of weights are not held twice)."""
        key = id(a)
        if key not in self._fids:
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"a program array must be contiguous float32, not {a.dtype} {a.shape}")
            self._fids[key] = len(self.F)
            self.F.append((a if a.flags.writeable or shared else a.copy()).reshape(a.size))
            self._keep.append(a)
            if shared:
                self._shared.add(self._fids[key])
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
                 residual, band, nchunks, _workers) = a
                kh, kw, Ce = wt.shape
                self.op([OP_BLOCK, at(x), self.f(bp_e), self.f(be), self.f(wt), self.f(bd), self.f(bp_p), self.f(bpp),
                         at(y), self.i(offs_e), self.i(offs_p), int(has_e), int(has_p), int(residual), N,
                         in_shape[2], in_shape[3], in_shape[1], Ho, Wo, M, kh, kw, Ce, bp_e.shape[0], bp_p.shape[0],
                         sh, sw, pt, pl, band, nchunks], elo, ehi, dlo, dhi)
            else:
                raise ValueError(f"unknown kernel {kind!r}")

    def finish(self, workers, pack_weights=False):
        """Freeze the tables; ``workers``: the threads :meth:`run` uses (1: the caller alone). The
        kernels get the arrays by address (the program holds them). The arrays the kernels write
        (other than slots) are placed in one arena (:func:`plan_arena`); with ``pack_weights`` (a
        whole forward's program) the others (weights) are copied after it, all in one buffer on
        huge pages."""
        self._place_in_arena(pack_weights)
        self.I = self.I or [np.zeros(1, dtype=np.int64)]
        self.FP = np.array([a.ctypes.data for a in self.F], dtype=np.int64)
        self.FS = np.array([a.size for a in self.F], dtype=np.int64)
        self.IP = np.array([a.ctypes.data for a in self.I], dtype=np.int64)
        self.IS = np.array([a.size for a in self.I], dtype=np.int64)
        self.ops = np.array(self.rows, dtype=np.int64).reshape(-1, NI)
        self.fp = np.array(self.fpar, dtype=np.float32).reshape(-1, 4)
        self.counters = np.zeros((len(self.rows) + 1, 2), dtype=np.int64)   # the last: thread numbers
        self.workers = workers
        self._slot_order = list(self.slots.values())
        more = _more_kernels_address() if any(r[0] >= OP_WPOOL for r in self.rows) else 0
        self._mail = np.array([self.FP.ctypes.data, len(self.F), self.FS.ctypes.data, self.IP.ctypes.data, len(self.I),
                               self.IS.ctypes.data, self.ops.ctypes.data, len(self.ops), self.fp.ctypes.data,
                               self.counters.ctypes.data, 0, 0, more], dtype=np.int64)
        return self

    def _place_in_arena(self, pack_weights):
        # the written arrays' live ranges (first write .. last read, in kernels) -> views of one
        # arena in which arrays live at the same time never overlap
        slots = set(self.slots.values())
        first, last = {}, {}
        for k, row in enumerate(self.rows):
            for pos in _WRITES[row[0]]:
                i = int(row[pos])
                if i not in slots:
                    first.setdefault(i, k)
                    last[i] = max(last.get(i, k), k)
            for pos in _READS[row[0]]:
                i = int(row[pos])
                if i in first:
                    last[i] = max(last[i], k)
        ids = sorted(first)
        offs, size = plan_arena([self.F[i].size for i in ids], [(first[i], last[i]) for i in ids])
        # a whole forward's other arrays (weights, tables) packed after the arena, all in one
        # buffer on huge pages: its ~20 MB of weights (Lite0) in 4 KB pages miss the TLB on every
        # pass. A layer's own program keeps its arrays where they are (a huge page per layer
        # would cost 2 MB of memory each)
        rest = [i for i in range(len(self.F)) if i not in first and i not in slots and i not in self._shared] \
            if pack_weights else []
        roffs, at = [], size
        for i in rest:
            roffs.append(at)
            at += -(-self.F[i].size // ALIGN) * ALIGN
        self.arena = _huge_zeros(at) if pack_weights else np.zeros(size, dtype=np.float32)
        self.scratch = self.arena[:size]          # the written arrays' part
        for i, o in zip(ids, offs):
            self.F[i] = self.arena[o:o + self.F[i].size]
        for i, o in zip(rest, roffs):
            a = self.arena[o:o + self.F[i].size]
            a[:] = self.F[i]
            self.F[i] = a

    # -- running
    def run_slots(self, arrays):
        """:meth:`run` for arrays the caller made itself (C-contiguous float32, large enough), given
        in the order their slots were made: the path of a whole forward, which repeats none of
        :meth:`run`'s checks (after an idle pause each Python operation misses the caches)."""
        FP, FS = self.FP, self.FS
        for idx, a in zip(self._slot_order, arrays):
            FP[idx] = a.ctypes.data
            FS[idx] = a.size
        self._launch(0, 0)

    def run(self, arrays, clock=None):
        """Run every kernel with the slots' arrays ``arrays`` (name -> C-contiguous float32 of at
        least the size the kernels use; referenced only during the call). ``clock``: an int64
        (T, kernels + 1, 2) array that receives the first T threads' time-stamp counter readings
        (``[t, 0, 0]`` at the start, ``[t, k + 1, 0]`` when thread t finished its tasks of kernel k,
        ``[t, k + 1, 1]`` when all of them were done), threads numbered as they start."""
        for name, a in arrays.items():
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"slot {name}: a program array must be contiguous float32, not {a.dtype}")
            idx = self.slots[name]
            self.FP[idx] = a.ctypes.data
            self.FS[idx] = a.size
        if clock is None:
            self._launch(0, 0)
            return
        if clock.dtype != np.int64 or clock.ndim != 3 or clock.shape[1:] != (len(self.ops) + 1, 2) \
                or not clock.flags.c_contiguous:
            raise ValueError(f"clock: an int64 (threads, {len(self.ops) + 1}, 2) array, "
                             f"not {clock.dtype} {clock.shape}")
        self._launch(clock.ctypes.data, clock.shape[0])

    def _launch(self, clock_address, timed):
        # run the kernels on the slots set, the first ``timed`` threads stamping the clock at
        # clock_address (0, 0: none)
        self.counters.fill(0)
        self._mail[10], self._mail[11] = clock_address, timed
        pool().run(_program_address(), self._mail, self.workers)
