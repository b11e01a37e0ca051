"""The channels-last kernels' task loops (Numba, GIL-free): each runs on any number of threads.

Every function here is one thread's part of a kernel: it takes tasks from a shared counter
(``counter[0]``, :func:`minicaffe.simd.fetch_add`), counts each finished one in ``counter[1]``
(:func:`minicaffe.simd.task_done`) and returns the kernel's task count, so that
:mod:`minicaffe.executor` can run a sequence of them on all threads in one go, each thread moving
to the next kernel once every task of the current one is done. Shapes and the kernels' meaning:
:mod:`minicaffe.layers.convolution.nhwc`, which prepares their arguments.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...simd import (
    DW7_ON,
    DW_R,
    DW_R7,
    MR,
    NR,
    QW,
    copy_floats,
    dw7_rows_3s1,
    dw7_rows_3s2,
    dw7_rows_5s1,
    dw7_rows_5s2,
    dw_rows_3s1,
    dw_rows_3s2,
    dw_rows_5s1,
    dw_rows_5s2,
    dw_tile,
    dw_tile1,
    fetch_add,
    indirect_tile_residual,
    indirect_tile_residual_3q,
    indirect_tile_residual_half,
    indirect_tile_residual_q,
    indirect_tile_store,
    indirect_tile_store_3q,
    indirect_tile_store_half,
    indirect_tile_store_q,
    row_tile_residual,
    row_tile_residual_half,
    row_tile_store,
    row_tile_store_half,
    task_done,
    view,
    zero_floats,
)
from ...simd import W as SIMD_W

#: tiles per task of the 1x1 kernel
TILES_PER_TASK = 8


@njit(cache=True, nogil=True, inline="always")
def _tile_out(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n):
    # one tile of a 1x1 product stored with bias and clip (simd.indirect_tile_store), narrower
    # tiles when the panel's used channels fit half a vector, one, or one and a half (inlined: a
    # call per tile would cost as much as a short tile)
    if n <= QW:
        indirect_tile_store_q(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)
    elif n <= SIMD_W:
        indirect_tile_store_half(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)
    elif n <= SIMD_W + QW:
        indirect_tile_store_3q(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)
    else:
        indirect_tile_store(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)


@njit(cache=True, nogil=True, inline="always")
def _tile_out_residual(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res):
    # _tile_out adding res (y's layout) before the clip
    if n <= QW:
        indirect_tile_residual_q(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)
    elif n <= SIMD_W:
        indirect_tile_residual_half(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)
    elif n <= SIMD_W + QW:
        indirect_tile_residual_3q(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)
    else:
        indirect_tile_residual(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)


@njit(cache=True, nogil=True, inline="always")
def _row_out(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res, has_res):
    # _tile_out / _tile_out_residual for one pixel (pix, ypix: 1-element arrays)
    if has_res:
        if n <= SIMD_W:
            row_tile_residual_half(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)
        else:
            row_tile_residual(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)
    elif n <= SIMD_W:
        row_tile_store_half(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)
    else:
        row_tile_store(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)


@njit(cache=True, nogil=True, inline="always")
def zero_border_row(yf, r, oHp, oWp, ot, ol, Ho, Wo, M):
    # padded row r of an (N, oHp, oWp, M) array holding an (N, Ho, Wo, M) one at (ot, ol): its zero
    # border (the whole row above or below the image, else the columns either side of it)
    hr = r % oHp
    if hr < ot or hr >= ot + Ho:
        zero_floats(yf, r * oWp * M, oWp * M)
    else:
        zero_floats(yf, r * oWp * M, ol * M)
        zero_floats(yf, (r * oWp + ol + Wo) * M, (oWp - ol - Wo) * M)


@njit(cache=True, nogil=True, inline="always")
def store_pixel(v, yf, n, oh, ow, nchw, Ho, Wo, oHp, oWp, ot, ol):
    # v: (C,) one output pixel's channels -> image n's pixel (oh, ow) of yf: an (N, C, Ho, Wo) NCHW
    # array when nchw, else an (N, oHp, oWp, C) channels-last one holding the output at (ot, ol)
    C = v.shape[0]
    if nchw:
        for c in range(C):
            yf[((n * C + c) * Ho + oh) * Wo + ow] = v[c]
    else:
        d = ((n * oHp + oh + ot) * oWp + ow + ol) * C
        for c in range(C):
            yf[d + c] = v[c]


@njit(cache=True, nogil=True, inline="always")
def next_task(counter, total, border, yf, oHp, oWp, ot, ol, Ho, Wo, M):
    # The next task of a kernel with ``total`` tasks whose padded output's ``border`` rows are tasks
    # total .. total + border - 1 (see zero_border_row; done here, counted in counter[1]) -> its
    # number, or -1 when every task is taken
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total + border:
            return -1
        if t < total:
            return t
        zero_border_row(yf, t - total, oHp, oWp, ot, ol, Ho, Wo, M)
        task_done(counter, 1)


@njit(cache=True, nogil=True, inline="always")
def _gemm_pixels(q0, K, geo, m0, pix, ypix):
    # the input bases (pix) and output indices + m0 (ypix) of output pixels q0 .. q0+MR-1 (geo: see
    # _gemm_worker)
    Ho, Wo, iHp, iWp, iC, sh, sw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    oHp, oWp, ot, ol, in_rows, out_rows, M = geo[7], geo[8], geo[9], geo[10], geo[11], geo[12], geo[14]
    if in_rows and out_rows:
        for p in range(MR):
            pix[p] = (q0 + p) * K
            ypix[p] = (q0 + p) * M + m0
        return
    n = q0 // (Ho * Wo)
    oh = (q0 - n * Ho * Wo) // Wo
    ow = q0 - (n * Ho + oh) * Wo
    for p in range(MR):
        pix[p] = (q0 + p) * K if in_rows else ((n * iHp + oh * sh) * iWp + ow * sw) * iC
        ypix[p] = ((q0 + p) * M if out_rows else ((n * oHp + oh + ot) * oWp + ow + ol) * M) + m0
        ow += 1
        if ow == Wo:
            ow = 0
            oh += 1
            if oh == Ho:
                oh = 0
                n += 1


@njit(cache=True, nogil=True)
def _gemm_worker(xf, offs, bp, b, lo, hi, geo, counter, yf, res, has_res):
    # The 1x1 product over output pixels, yf[pixel q's base + m] = clip(sum_k xf[q's input base +
    # offs[k]] * W[m, k] + b[m] [+ res[same index]], lo, hi). offs: (K,) int64, bp: (Pn, K*NR)
    # packed weight panels, b: (Pn*NR,) bias zero-padded; geo: int64 (Ho, Wo, iHp, iWp, iC, sh, sw,
    # oHp, oWp, ot, ol, in_rows, out_rows, N, M): output pixel q = (n, oh, ow) of N x Ho x Wo reads
    # from input base ((n*iHp + oh*sh)*iWp + ow*sw)*iC (or q*K when in_rows: contiguous rows of K)
    # and writes at ((n*oHp + oh + ot)*oWp + ow + ol)*M (or q*M when out_rows): a padded input read
    # by taps (offs), an output stored into a zero-padded buffer; has_res: a residual of y's layout
    # added before the clip. Tasks (block of MR-pixel tiles, panel) from counter[0], block fastest
    # so consecutive tasks share a panel, each counted in counter[1] when done; the P % MR pixels
    # after the last full tile go through a one-pixel tile each. The tile adds the bias, clips and
    # stores its rows itself. A padded output's border is zeroed.
    # One thread's loop; returns the task count.
    K = offs.shape[0]
    N, Ho, Wo, M = geo[13], geo[0], geo[1], geo[14]
    P = N * Ho * Wo
    Pn = bp.shape[0]
    nfull = P // MR
    ntiles = (P + MR - 1) // MR          # the last: the P % MR pixels left, one at a time
    nblk = (ntiles + TILES_PER_TASK - 1) // TILES_PER_TASK
    total = nblk * Pn
    # a padded output's border (zeros the reader relies on) is written too, one task per padded
    # row after the products: the buffer may hold other arrays between two runs
    oHp, oWp, ot, ol = geo[7], geo[8], geo[9], geo[10]
    border = 0 if geo[12] else N * oHp
    pix = np.empty(MR, dtype=np.int64)
    ypix = np.empty(MR, dtype=np.int64)
    pix1 = np.empty(1, dtype=np.int64)
    ypix1 = np.empty(1, dtype=np.int64)
    while True:
        t = next_task(counter, total, border, yf, oHp, oWp, ot, ol, Ho, Wo, M)
        if t < 0:
            break
        blk = t % nblk
        pnl = t // nblk
        panel = bp[pnl]
        m0 = pnl * NR
        mcount = min(NR, M - m0)
        bias = b[m0:m0 + NR]
        t1 = min(nfull, (blk + 1) * TILES_PER_TASK)
        # one loop per epilogue: a tile loop holding both runs ~40% slower
        if has_res:
            for ti in range(blk * TILES_PER_TASK, t1):
                _gemm_pixels(ti * MR, K, geo, m0, pix, ypix)
                _tile_out_residual(xf, pix, offs, K, panel, bias, lo, hi, yf, ypix, mcount, res)
        else:
            for ti in range(blk * TILES_PER_TASK, t1):
                _gemm_pixels(ti * MR, K, geo, m0, pix, ypix)
                _tile_out(xf, pix, offs, K, panel, bias, lo, hi, yf, ypix, mcount)
        if ntiles > nfull and (blk + 1) * TILES_PER_TASK >= ntiles:
            _gemm_pixels(nfull * MR, K, geo, m0, pix, ypix)
            for p in range(P - nfull * MR):
                pix1[0] = pix[p]
                ypix1[0] = ypix[p]
                _row_out(xf, pix1, offs, K, panel, bias, lo, hi, yf, ypix1, mcount, res, has_res)
        task_done(counter, 1)
    return total + border


@njit(cache=True, nogil=True)
def _pad_worker(x, nchw, pt, pl, xp, counter):
    # x: (N, C, H, W) array (nchw) or (N, H, W, C) array -> xp: (N, Hp, Wp, C) channels last, x at
    # (pt, pl), zeros elsewhere (NCHW -> NHWC when nchw); tasks: padded rows from counter[0] (done
    # counted in counter[1]); one thread's loop, returns the task count
    N, Hp, Wp, C = xp.shape
    H, W = (x.shape[2], x.shape[3]) if nchw else (x.shape[1], x.shape[2])
    xpf = view(xp, (xp.size,))
    xf = view(x, (x.size,))
    rows = N * Hp
    step = max(1, rows // 32)         # rows a task: a few tasks a thread (an atomic is ~0.1 us)
    total = -(-rows // step)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        for r in range(t * step, min(rows, t * step + step)):
            _pad_row(x, nchw, pt, pl, xpf, xf, r, N, Hp, Wp, C, H, W)
        task_done(counter, 1)
    return total


@njit(cache=True, nogil=True, inline="always")
def _pad_row(x, nchw, pt, pl, xpf, xf, t, N, Hp, Wp, C, H, W):
    # padded row t (image n, row h + pt) of _pad_worker
    n = t // Hp
    h = t - n * Hp - pt
    d = t * Wp * C
    if h < 0 or h >= H:
        zero_floats(xpf, d, Wp * C)
    else:
        zero_floats(xpf, d, pl * C)
        zero_floats(xpf, d + (pl + W) * C, (Wp - pl - W) * C)
        d += pl * C
        if nchw and C == 3:
            # an image's three planes interleaved pixel by pixel: sequential stores, which
            # LLVM vectorises with shuffles (a plane at a time stores with a stride of 3)
            s0, s1, s2 = x[n, 0, h], x[n, 1, h], x[n, 2, h]
            for q in range(W):
                xpf[d + 3 * q] = s0[q]
                xpf[d + 3 * q + 1] = s1[q]
                xpf[d + 3 * q + 2] = s2[q]
        elif nchw:
            for c in range(C):
                src = x[n, c, h]
                for q in range(W):
                    xpf[d + q * C + c] = src[q]
        else:
            copy_floats(xpf, d, xf, (n * H + h) * W * C, W * C)


@njit(cache=True, nogil=True, inline="always")
def _tap_tables(kh, kw, Wp, C):
    # a depthwise kernel's tap table on padded rows of Wp pixels of C channels: tap (i, j)'s offset
    # from an output pixel's first input, (i*Wp + j)*C, and where its weights start, (i*kw + j)*C
    toffs = np.empty(kh * kw, dtype=np.int64)
    wofs = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            toffs[i * kw + j] = (i * Wp + j) * C
            wofs[i * kw + j] = (i * kw + j) * C
    return toffs, wofs


@njit(cache=True, nogil=True)
def _dw_out_row(src, sb, rstep, kh, kw, sw, wf, bd, lo, hi, Wo, y, yb, toffs, wofs, ca, cb):
    # One output row of a depthwise convolution on zero-padded channels-last rows: src: flat rows
    # of rstep floats, pixels of C = bd.shape[0] channels; output pixel ow's first tap at
    # src[sb + ow*sw*C]; wf: (kh*kw*C,) weights tap-major; y[yb + ow*C + c] gets its clipped sum.
    # Tiles of DW_R7 pixels x one channel vector where the row is a multiple of DW_R7 wide (and the
    # machine has the registers: DW7_ON), else of DW_R pixels (the row's last tile shifted back to
    # end at its last pixel, recomputing a few), through the column-sharing tiles for 3x3 / 5x5
    # kernels at stride 1 / 2, else (and for rows narrower than DW_R) through the tap table toffs /
    # wofs (kh*kw entries: (i*Wp + j)*C and t*C); the channels past the last full vector one by one.
    # Channels [ca, cb) only (ca a multiple of the vector width).
    C = bd.shape[0]
    CV = min(cb, C - C % SIMD_W)
    nt = kh * kw
    if DW7_ON and Wo % DW_R7 == 0 and (kw == 3 or kw == 5) and sw <= 2:
        for o in range(0, Wo, DW_R7):
            xb = sb + o * sw * C
            ob = yb + o * C
            for c0 in range(ca, CV, SIMD_W):
                if kw == 3 and sw == 1:
                    dw7_rows_3s1(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 3:
                    dw7_rows_3s2(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif sw == 1:
                    dw7_rows_5s1(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                else:
                    dw7_rows_5s2(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
    elif Wo >= DW_R:
        ow = 0
        while True:
            o = min(ow, Wo - DW_R)
            xb = sb + o * sw * C
            ob = yb + o * C
            for c0 in range(ca, CV, SIMD_W):
                if kw == 3 and sw == 1:
                    dw_rows_3s1(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 3 and sw == 2:
                    dw_rows_3s2(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 5 and sw == 1:
                    dw_rows_5s1(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 5 and sw == 2:
                    dw_rows_5s2(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                else:
                    dw_tile(src, xb + c0, sw * C, toffs, wofs, nt, wf, c0, bd, lo, hi, y, ob + c0, C)
            if o == Wo - DW_R:
                break
            ow += DW_R
    else:
        for o in range(Wo):
            for c0 in range(ca, CV, SIMD_W):
                dw_tile1(src, sb + o * sw * C + c0, sw * C, toffs, wofs, nt, wf, c0, bd, lo, hi, y, yb + o * C + c0,
                         C)
    for o in range(Wo):
        for c in range(max(ca, CV), cb):
            acc = bd[c]
            for i in range(kh):
                for j in range(kw):
                    acc += src[sb + i * rstep + (o * sw + j) * C + c] * wf[(i * kw + j) * C + c]
            acc = lo if acc < lo else acc
            y[yb + o * C + c] = hi if acc > hi else acc


@njit(cache=True, nogil=True)
def _dw_padded_worker(xp, wt, bd, sh, sw, lo, hi, rows, cg, counter, y):
    # xp: (N, Hp, Wp, C) zero-padded, wt: (kh, kw, C), y: (N, Ho, Wo, C); tasks (image, chunk of
    # ``rows`` output rows, group of cg channels) from counter[0], channels fastest, each counted in
    # counter[1] when done; returns the task count
    N, Hp, Wp, C = xp.shape
    Ho, Wo = y.shape[1], y.shape[2]
    kh, kw = wt.shape[0], wt.shape[1]
    nr = (Ho + rows - 1) // rows
    ng = (C + cg - 1) // cg
    total = N * nr * ng
    xf = view(xp, (xp.size,))
    yf = view(y, (y.size,))
    wf = view(wt, (wt.size,))
    rstep = Wp * C
    toffs, wofs = _tap_tables(kh, kw, Wp, C)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        g = t % ng
        r = t // ng
        n = r // nr
        o0 = (r - n * nr) * rows
        for oh in range(o0, min(Ho, o0 + rows)):
            _dw_out_row(xf, (n * Hp + oh * sh) * rstep, rstep, kh, kw, sw, wf, bd, lo, hi, Wo, yf,
                        (n * Ho + oh) * Wo * C, toffs, wofs, g * cg, min(C, (g + 1) * cg))
        task_done(counter, 1)
    return total


@njit(cache=True, nogil=True)
def _block_worker(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project,
                  offs_p, bp_p, bpp, residual, band, nchunks, counter, y):
    # xt: (N, H, W, Cin) block input. Expansion (has_expand): offs_e = arange(Cin), bp_e: (Pe,
    # Cin*NR) packed 1x1 weights, be: (Pe*NR,) bias zero-padded, elo/ehi its clip. Depthwise: wt:
    # (kh, kw, Ce), bd: (Ce,), dlo/dhi. Projection (has_project): offs_p = arange(Ce), bp_p: (Pp,
    # Ce*NR), bpp: (Pp*NR,); residual: add xt (same shape as y). y: (N, Ho, Wo, Cout), Cout = Ce
    # without a projection. Tasks are (image, one of nchunks equal chunks of output rows) from
    # counter[0] (counted in
    # counter[1] when done; the task count is returned). A task
    # walks its chunk in bands of ``band`` output rows: the rows of the zero-padded depthwise input
    # the band's taps read are in a per-thread buffer E ((band-1)*sh + kh rows of Wp >= pl + W
    # pixels, the padding zeros), expanded there from the input rows (or copied, without an
    # expansion), keeping the rows the previous band already has (moved to the front); the
    # depthwise rows run on E into a band buffer D (or y), then D is projected into y. One
    # thread's loop over tasks; _block runs it on every thread.
    N, H, W, Cin = xt.shape
    Ho, Wo, Cout = y.shape[1], y.shape[2], y.shape[3]
    kh, kw, Ce = wt.shape[0], wt.shape[1], wt.shape[2]
    Pe = bp_e.shape[0]
    Pp = bp_p.shape[0]
    Wp = max(W + pl, (Wo - 1) * sw + kw)
    rows_max = (band - 1) * sh + kh
    rstep = Wp * Ce
    total = N * nchunks
    yf = view(y, (y.size,))
    rf = view(xt, (xt.size,))
    wf = view(wt, (wt.size,))
    E = np.zeros(rows_max * rstep, dtype=np.float32)
    D = np.empty((band if has_project else 1) * Wo * Ce, dtype=np.float32)
    pix = np.empty(MR, dtype=np.int64)
    ypix = np.empty(MR, dtype=np.int64)
    ebase = np.empty(MR, dtype=np.int64)
    toffs, wofs = _tap_tables(kh, kw, Wp, Ce)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        n = t // nchunks
        o0 = (t % nchunks) * Ho // nchunks
        o1 = (t % nchunks + 1) * Ho // nchunks
        xf = view(xt[n], (H * W * Cin,))
        e0 = 0
        e1 = 0                                   # padded rows [e0, e1) are in E
        for b0 in range(o0, o1, band):
            b1 = min(o1, b0 + band)
            q0r = b0 * sh                        # the band's padded rows [q0r, q1r)
            q1r = (b1 - 1) * sh + kh
            start = q0r
            if e0 <= q0r < e1:
                # rows q0r..e1 are there from the previous band: move them to the front
                # (ascending copy: the destination starts before the source)
                keep = (e1 - q0r) * rstep
                src = (q0r - e0) * rstep
                for q in range(keep):
                    E[q] = E[src + q]
                start = e1
            e0 = q0r
            e1 = q1r
            # rows above and below the image are padding: zeros (their pixels, the pad columns
            # are never written)
            for pr in range(start, q1r):
                if pr < pt or pr >= pt + H:
                    zero_floats(E, (pr - q0r) * rstep, rstep)
            ra = max(start - pt, 0)              # image rows [ra, rb) to bring in
            rb = min(q1r - pt, H)
            if rb > ra and has_expand:
                # expand pixels [ra*W, rb*W); the last tile shifts back into rows already in E
                # (recomputing them: same values) rather than narrowing
                p_lo = ra * W
                p_hi = rb * W
                p_min = max(q0r - pt, 0) * W
                for ti in range((p_hi - p_lo + MR - 1) // MR):
                    q0 = max(p_min, min(p_lo + ti * MR, p_hi - MR))
                    r = q0 // W
                    c = q0 - r * W
                    for p in range(MR):
                        pix[p] = (q0 + p) * Cin
                        ebase[p] = (r + pt - q0r) * rstep + (pl + c) * Ce
                        c += 1
                        if c == W:
                            c = 0
                            r += 1
                    for pnl in range(Pe):
                        m0 = pnl * NR
                        for p in range(MR):
                            ypix[p] = ebase[p] + m0
                        _tile_out(xf, pix, offs_e, Cin, bp_e[pnl], be[m0:m0 + NR], elo, ehi, E, ypix,
                                  min(NR, Ce - m0))
            elif rb > ra:
                for r in range(ra, rb):
                    dst = (r + pt - q0r) * rstep + pl * Ce
                    src = r * W * Cin
                    copy_floats(E, dst, xf, src, W * Ce)
            for oh in range(b0, b1):
                if has_project:
                    _dw_out_row(E, (oh * sh - q0r) * rstep, rstep, kh, kw, sw, wf, bd, dlo, dhi, Wo, D,
                                (oh - b0) * Wo * Ce, toffs, wofs, np.int64(0), Ce)
                else:
                    _dw_out_row(E, (oh * sh - q0r) * rstep, rstep, kh, kw, sw, wf, bd, dlo, dhi, Wo, yf,
                                (n * Ho + oh) * Wo * Cout, toffs, wofs, np.int64(0), Ce)
            if has_project:
                # the band's Wo*(b1-b0) >= MR pixels; the last tile shifts back
                Pb = (b1 - b0) * Wo
                for ti in range((Pb + MR - 1) // MR):
                    q0 = min(ti * MR, Pb - MR)
                    for p in range(MR):
                        pix[p] = (q0 + p) * Ce
                    lo = np.float32(-np.inf)
                    hi = np.float32(np.inf)
                    # one loop per epilogue (see _gemm_worker)
                    if residual:
                        for pnl in range(Pp):
                            m0 = pnl * NR
                            for p in range(MR):
                                ypix[p] = ((n * Ho + b0) * Wo + q0 + p) * Cout + m0
                            _tile_out_residual(D, pix, offs_p, Ce, bp_p[pnl], bpp[m0:m0 + NR], lo, hi, yf, ypix,
                                               min(NR, Cout - m0), rf)
                    else:
                        for pnl in range(Pp):
                            m0 = pnl * NR
                            for p in range(MR):
                                ypix[p] = ((n * Ho + b0) * Wo + q0 + p) * Cout + m0
                            _tile_out(D, pix, offs_p, Ce, bp_p[pnl], bpp[m0:m0 + NR], lo, hi, yf, ypix,
                                      min(NR, Cout - m0))
        task_done(counter, 1)
    return total
