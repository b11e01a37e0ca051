"""SIMD register-blocked micro-kernel for Numba, written as LLVM vector IR.

LLVM does not turn a plain Numba loop nest into a register-blocked GEMM kernel (constant-trip loops
are unrolled before the loop vectoriser runs, heap accumulators are not promoted to registers), so
this module emits one through ``numba.extending.intrinsic``: ``MR x NR`` accumulators held in
``<W x float>`` registers (``NR = 2 * W``), one ``llvm.fma`` per accumulator and k. ``W`` is the
host's float vector width (16 with AVX-512, else 8), read once from LLVM's host CPU features.

:func:`indirect_tile` (MR = 6 rows x 2 vectors) comes from a generator of such tiles: the A
operand is read through a table of row bases and offsets (an "indirection" in the manner of
indirect convolution, Dukhan 2019), so a convolution needs no im2col copy. Nothing here knows
about layers; see ``minicaffe.layers.convolution.direct``.
"""
from __future__ import annotations

import os
import platform

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _host_vector_width():
    # MINICAFFE_SIMD_WIDTH=8 builds the AVX2-width kernels on an AVX-512 machine, to test them
    # (scripts/check_simd_width.py). Numba's cache does not key kernels by it: such a run must
    # use a cache directory of its own.
    forced = os.environ.get("MINICAFFE_SIMD_WIDTH")
    if forced is not None:
        if forced not in ("8", "16") or not os.environ.get("NUMBA_CACHE_DIR"):
            raise RuntimeError("MINICAFFE_SIMD_WIDTH takes 8 or 16 and needs NUMBA_CACHE_DIR set to a "
                               "directory of its own (cached kernels are not keyed by the width)")
        return int(forced)
    try:
        feats = llvm.get_host_cpu_features()
    except RuntimeError:
        return 8
    return 16 if feats.get("avx512f", False) else 8


#: float32 lanes per vector register on this machine
W = _host_vector_width()
#: output pixels per tile (rows of the register block)
MR = 6
#: output channels per tile (two vectors)
NR = 2 * W

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
#: the float vector register type
_VEC = ir.VectorType(_F32, W)


def _fma(builder):
    """The module's ``llvm.fma`` on float vectors."""
    name = f"llvm.fma.v{W}f32"
    return builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                           name=name)


def _splat(builder, x):
    """A float scalar -> a vector of W copies."""
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined), ir.Constant(ir.VectorType(_I32, W), [0] * W))


def _clip(builder, v, lo, hi):
    """v clipped to [lo, hi] by compare-and-select, not minnum/maxnum: a NaN stays NaN."""
    v = builder.select(builder.fcmp_ordered("<", v, lo), lo, v)
    return builder.select(builder.fcmp_ordered(">", v, hi), hi, v)


def _counted_loop(builder, name, count, init):
    """Open ``for i in range(count)`` with loop-carried values starting at ``init`` -> (i, values,
    close); the builder is in the loop body; ``close(next_values)`` ends the body and leaves the
    builder after the loop, where ``values`` hold the final values."""
    fn = builder.function
    pre = builder.block
    loop = fn.append_basic_block(f"{name}_loop")
    body = fn.append_basic_block(f"{name}_body")
    done = fn.append_basic_block(f"{name}_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    values = [builder.phi(x.type) for x in init]
    i.add_incoming(ir.Constant(_I64, 0), pre)
    for v, x in zip(values, init):
        v.add_incoming(x, pre)
    builder.cbranch(builder.icmp_signed("<", i, count), body, done)
    builder.position_at_end(body)

    def close(nxt):
        end = builder.block
        i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), end)
        for v, x in zip(values, nxt):
            v.add_incoming(x, end)
        builder.branch(loop)
        builder.position_at_end(done)

    return i, values, close


def _make_tile(mr, nv, store=False, residual=False, bstride=None, split=1, lanes=None):
    """An intrinsic with an mr x (nv * W) register block over k < K of
    acc[p, r] = sum_k xf[pix[p] + offs[k]] * bp[k * nr + r] (p < mr, r < nr = nv * W):

    - ``tile(xf, pix, offs, k_count, bp, cs)`` writes acc to the scratch cs[p * nr + r];
    - with ``store``, ``tile(xf, pix, offs, k_count, bp, bias, lo, hi, y, ypix, ncount)`` writes
      y[ypix[p] + r] = clip(acc[p, r] + bias[r], lo, hi) for r < ncount with vector stores (masked
      for ncount < nr): a layer's output pass (lo = -inf, hi = inf: no activation; a NaN stays NaN);
    - with ``residual`` too, ``tile(..., ypix, ncount, res)`` adds res[ypix[p] + r] before the clip
      (a residual sum fused into the output pass; res has y's layout).

    ``split`` > 1 sums k in that many interleaved partial blocks, added at the end: a one-row
    tile's accumulators would otherwise wait on each other's FMA latency every k. ``lanes``: the
    float lanes of each of the block's vectors instead of nv of W (e.g. (16, 8): 24 channels as a
    512-bit and a 256-bit vector, so a layer of 24 or 40 channels computes no padding lanes).

    xf: float32 1-D (the A operand, read in place), pix: int64 1-D (mr row base indices into xf),
    offs: int64 1-D (K offsets), k_count: int64 (K), bp: float32 1-D packed B panel (K rows of
    ``bstride`` >= nr floats, default nr, of which the first nr are used), cs: float32 1-D scratch
    (mr x nr), bias: float32 1-D (nr), y: float32 1-D, ypix: int64 1-D (mr). No bounds checks: the
    caller guarantees every address is inside its array.
    """
    lanes = tuple(lanes) if lanes is not None else (W,) * nv
    nv = len(lanes)
    col = [sum(lanes[:h]) for h in range(nv)]            # each vector's first channel
    nr = sum(lanes)
    bstride = nr if bstride is None else bstride
    vts = [ir.VectorType(_F32, L) for L in lanes]

    def fma_of(builder, L):
        name = f"llvm.fma.v{L}f32"
        vt = ir.VectorType(_F32, L)
        return builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                                               name=name)

    def splat(builder, x, L):
        vt = ir.VectorType(_F32, L)
        v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, L), [0] * L))

    def body(context, builder, signature, args):
        xf_v, pix_v, offs_v, k_v, bp_v = args[:5]
        i64, i32 = _I64, _I32
        X = context.make_array(signature.args[0])(context, builder, xf_v).data
        Pix = context.make_array(signature.args[1])(context, builder, pix_v).data
        O = context.make_array(signature.args[2])(context, builder, offs_v).data
        B = context.make_array(signature.args[4])(context, builder, bp_v).data
        mod = builder.module
        fmas = [fma_of(builder, L) for L in lanes]
        rows = [builder.gep(X, [builder.load(builder.gep(Pix, [ir.Constant(i64, p)]))]) for p in range(mr)]
        fn = builder.function
        zeros = [ir.Constant(vt, [0.0] * L) for vt, L in zip(vts, lanes)]

        def vload(base, off, h):
            return builder.load(builder.bitcast(builder.gep(base, [off]), vts[h].as_pointer()), align=4)

        def step(k, accs):
            off = builder.load(builder.gep(O, [k]))
            bb = builder.gep(B, [builder.mul(k, ir.Constant(i64, bstride))])
            bvs = [vload(bb, ir.Constant(i64, col[h]), h) for h in range(nv)]
            new = []
            for p in range(mr):
                a = builder.load(builder.gep(rows[p], [off]))
                avs = {L: splat(builder, a, L) for L in set(lanes)}
                for h in range(nv):
                    new.append(builder.call(fmas[h], [avs[lanes[h]], bvs[h], accs[p * nv + h]]))
            return new

        na = mr * nv
        init = [zeros[idx % nv] for idx in range(na)]
        if split == 1:
            k, accs, close = _counted_loop(builder, "tile", k_v, init)
            close(step(k, accs))
        else:
            kq = builder.sdiv(k_v, ir.Constant(i64, split))
            j, parts, close = _counted_loop(builder, "tile", kq, init * split)
            base = builder.mul(j, ir.Constant(i64, split))
            new = []
            for q in range(split):
                new += step(builder.add(base, ir.Constant(i64, q)), parts[q * na:(q + 1) * na])
            close(new)
            done = builder.mul(kq, ir.Constant(i64, split))
            i, accs, close = _counted_loop(builder, "tile_rest", builder.sub(k_v, done), parts[:na])
            close(step(builder.add(done, i), accs))
            for q in range(1, split):
                accs = [builder.fadd(a, b) for a, b in zip(accs, parts[q * na:(q + 1) * na])]
        if not store:
            Cs = context.make_array(signature.args[5])(context, builder, args[5]).data
            for p in range(mr):
                for h in range(nv):
                    ptr = builder.bitcast(builder.gep(Cs, [ir.Constant(i64, p * nr + col[h])]), vts[h].as_pointer())
                    builder.store(accs[p * nv + h], ptr, align=4)
            return context.get_dummy_value()
        bias_v, lo_v, hi_v, y_v, ypix_v, n_v = args[5:11]
        Bias = context.make_array(signature.args[5])(context, builder, bias_v).data
        Y = context.make_array(signature.args[8])(context, builder, y_v).data
        Ypix = context.make_array(signature.args[9])(context, builder, ypix_v).data
        los = {L: splat(builder, lo_v, L) for L in set(lanes)}
        his = {L: splat(builder, hi_v, L) for L in set(lanes)}
        biases = [vload(Bias, ir.Constant(i64, col[h]), h) for h in range(nv)]
        offsets = []
        for p in range(mr):
            yo = builder.load(builder.gep(Ypix, [ir.Constant(i64, p)]))
            offsets += [builder.add(yo, ir.Constant(i64, col[h])) for h in range(nv)]
        ptrs = [builder.bitcast(builder.gep(Y, [o]), vts[idx % nv].as_pointer()) for idx, o in enumerate(offsets)]
        if residual:
            R = context.make_array(signature.args[11])(context, builder, args[11]).data
            rptrs = [builder.bitcast(builder.gep(R, [o]), vts[idx % nv].as_pointer()) for idx, o in enumerate(offsets)]

        def outputs(res):
            outs = []
            for idx in range(mr * nv):
                L = lanes[idx % nv]
                v = builder.fadd(accs[idx], biases[idx % nv])
                if residual:
                    v = builder.fadd(v, res[idx])
                outs.append(_clip(builder, v, los[L], his[L]))
            return outs

        full = fn.append_basic_block("store_full")
        part = fn.append_basic_block("store_part")
        out = fn.append_basic_block("store_done")
        builder.cbranch(builder.icmp_signed(">=", n_v, ir.Constant(i64, nr)), full, part)
        builder.position_at_end(full)
        res = [builder.load(rp, align=4) for rp in rptrs] if residual else None
        for v, ptr in zip(outputs(res), ptrs):
            builder.store(v, ptr, align=4)
        builder.branch(out)
        # the panel's last channels are past the layer's: masked loads and stores leave the next
        # pixel (and the end of the array) alone
        builder.position_at_end(part)
        masks, mstores, mloads = [], [], []
        for h, L in enumerate(lanes):
            vt, i1v, v64 = vts[h], ir.VectorType(ir.IntType(1), L), ir.VectorType(i64, L)
            mname = f"llvm.masked.store.v{L}f32.p0"
            mstores.append(mod.globals.get(mname) or ir.Function(
                mod, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, i1v]), name=mname))
            lname = f"llvm.masked.load.v{L}f32.p0"
            mloads.append(mod.globals.get(lname) or ir.Function(
                mod, ir.FunctionType(vt, [vt.as_pointer(), i32, i1v, vt]), name=lname))
            nb = builder.insert_element(ir.Constant(v64, ir.Undefined), n_v, ir.Constant(i32, 0))
            nb = builder.shuffle_vector(nb, ir.Constant(v64, ir.Undefined), ir.Constant(ir.VectorType(i32, L), [0] * L))
            masks.append(builder.icmp_signed("<", ir.Constant(v64, [col[h] + q for q in range(L)]), nb))
        res = None
        if residual:
            res = [builder.call(mloads[idx % nv], [rp, ir.Constant(i32, 4), masks[idx % nv], zeros[idx % nv]])
                   for idx, rp in enumerate(rptrs)]
        for idx, (v, ptr) in enumerate(zip(outputs(res), ptrs)):
            builder.call(mstores[idx % nv], [v, ptr, ir.Constant(i32, 4), masks[idx % nv]])
        builder.branch(out)
        builder.position_at_end(out)
        return context.get_dummy_value()

    if residual:
        @intrinsic
        def tile(typingctx, xf, pix, offs, k_count, bp, bias, lo, hi, y, ypix, ncount, res):
            return types.void(xf, pix, offs, k_count, bp, bias, lo, hi, y, ypix, types.int64, res), body
    elif store:
        @intrinsic
        def tile(typingctx, xf, pix, offs, k_count, bp, bias, lo, hi, y, ypix, ncount):
            return types.void(xf, pix, offs, k_count, bp, bias, lo, hi, y, ypix, types.int64), body
    else:
        @intrinsic
        def tile(typingctx, xf, pix, offs, k_count, bp, cs):
            return types.void(xf, pix, offs, k_count, bp, cs), body
    return tile


#: the convolution tile: MR output pixels x NR output channels, into a scratch block
indirect_tile = _make_tile(MR, 2)
#: the same tile, adding a bias, clipping (the fused activation) and storing NR contiguous
#: channels per output pixel (channels-last outputs)
indirect_tile_store = _make_tile(MR, 2, store=True)
#: and with a residual sum added in the output pass
indirect_tile_residual = _make_tile(MR, 2, store=True, residual=True)
#: the same two for a panel whose used channels fit one vector (the layer's last): half the work
indirect_tile_store_half = _make_tile(MR, 1, store=True, bstride=NR)
indirect_tile_residual_half = _make_tile(MR, 1, store=True, residual=True, bstride=NR)
#: the same two for a panel whose used channels fit one and a half vectors, or half of one (24, 40
#: channels with 512-bit vectors): no lanes computed for padding
QW = W // 2
indirect_tile_store_3q = _make_tile(MR, 0, store=True, bstride=NR, lanes=(W, QW))
indirect_tile_residual_3q = _make_tile(MR, 0, store=True, residual=True, bstride=NR, lanes=(W, QW))
indirect_tile_store_q = _make_tile(MR, 0, store=True, bstride=NR, lanes=(QW,))
indirect_tile_residual_q = _make_tile(MR, 0, store=True, residual=True, bstride=NR, lanes=(QW,))
#: one output pixel (the rows past a multiple of MR, an inner product of one row): the four
#: forms above with k split four ways
row_tile_store = _make_tile(1, 2, store=True, split=4)
row_tile_residual = _make_tile(1, 2, store=True, residual=True, split=4)
row_tile_store_half = _make_tile(1, 1, store=True, bstride=NR, split=4)
row_tile_residual_half = _make_tile(1, 1, store=True, residual=True, bstride=NR, split=4)


def element_ptr(context, builder, aty, arr, idx):
    """In an intrinsic: the address of element ``idx`` of the 1-D array ``arr`` of Numba type aty."""
    return builder.gep(context.make_array(aty)(context, builder, arr).data, [idx])


def emit_pause(builder):
    """In an intrinsic: the CPU's spin-wait hint (x86 ``pause``; nothing on other machines)."""
    if platform.machine() in ("x86_64", "AMD64"):
        mod = builder.module
        fn = mod.globals.get("llvm.x86.sse2.pause") or ir.Function(
            mod, ir.FunctionType(ir.VoidType(), []), name="llvm.x86.sse2.pause")
        builder.call(fn, [])


@intrinsic
def fetch_add(typingctx, counter, index, value):
    """Atomically add ``value`` to ``counter[index]`` (int64 1-D array) and return the old value:
    the shared task counter of a dynamically scheduled kernel (threads take the next chunk of
    tasks as they finish, so a thread that shares its core with another process does less)."""
    sig = types.int64(counter, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        arr, idx, val = args
        return builder.atomic_rmw("add", element_ptr(context, builder, signature.args[0], arr, idx), val, "monotonic")

    return sig, codegen


@intrinsic
def task_done(typingctx, counter, index):
    """Atomically add 1 to ``counter[index]`` with release ordering: a finished task's writes are
    visible to any thread that then reads the count with :func:`tasks_finished`."""
    sig = types.void(counter, types.int64)

    def codegen(context, builder, signature, args):
        arr, idx = args
        builder.atomic_rmw("add", element_ptr(context, builder, signature.args[0], arr, idx), ir.Constant(_I64, 1),
                           "release")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def wait_count(typingctx, counter, index, total):
    """Spin (with the CPU's pause hint) until ``counter[index]`` (atomic, acquire) reaches
    ``total``: the barrier between two kernels run in one parallel region, waiting for the tasks
    some thread has taken, never for a thread that took none."""
    sig = types.void(counter, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        arr, idx, total = args
        ptr = element_ptr(context, builder, signature.args[0], arr, idx)
        fn = builder.function
        loop = fn.append_basic_block("wait_loop")
        body = fn.append_basic_block("wait_body")
        done = fn.append_basic_block("wait_done")
        builder.branch(loop)
        builder.position_at_end(loop)
        v = builder.load_atomic(ptr, "acquire", 8)
        builder.cbranch(builder.icmp_signed("<", v, total), body, done)
        builder.position_at_end(body)
        emit_pause(builder)
        builder.branch(loop)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_floats(typingctx, dst, doff, src, soff, n):
    """dst[doff:doff+n] = src[soff:soff+n] (float32 1-D arrays, not overlapping) as one
    ``llvm.memcpy``: a copy loop over two arrays LLVM cannot prove distinct stays scalar, and a
    slice assignment compiles its shape-mismatch error path. No bounds checks."""
    sig = types.void(dst, types.int64, src, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        d, do, sr, so, n = args
        D = context.make_array(signature.args[0])(context, builder, d).data
        S = context.make_array(signature.args[2])(context, builder, sr).data
        i8p = ir.IntType(8).as_pointer()
        mod = builder.module
        fn = mod.globals.get("llvm.memcpy.p0.p0.i64") or ir.Function(
            mod, ir.FunctionType(ir.VoidType(), [i8p, i8p, _I64, ir.IntType(1)]), name="llvm.memcpy.p0.p0.i64")
        builder.call(fn, [builder.bitcast(builder.gep(D, [do]), i8p), builder.bitcast(builder.gep(S, [so]), i8p),
                          builder.mul(n, ir.Constant(_I64, 4)), ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def zero_floats(typingctx, dst, doff, n):
    """dst[doff:doff+n] = 0 (float32 1-D array) as one ``llvm.memset``. No bounds checks."""
    sig = types.void(dst, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        d, do, n = args
        D = context.make_array(signature.args[0])(context, builder, d).data
        i8p = ir.IntType(8).as_pointer()
        mod = builder.module
        fn = mod.globals.get("llvm.memset.p0.i64") or ir.Function(
            mod, ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(8), _I64, ir.IntType(1)]), name="llvm.memset.p0.i64")
        builder.call(fn, [builder.bitcast(builder.gep(D, [do]), i8p), ir.Constant(ir.IntType(8), 0),
                          builder.mul(n, ir.Constant(_I64, 4)), ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def view(typingctx, arr, shape):
    """``arr``'s memory (a C-contiguous array) as a C-contiguous array of ``shape`` (a tuple of
    ints whose product the caller guarantees is at most arr.size): ``reshape`` without its size
    check, whose error message alone costs seconds of compilation in every kernel that reshapes."""
    ndim = len(shape)
    retty = types.Array(arr.dtype, ndim, "C")
    sig = retty(arr, shape)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        from numba.np.arrayobj import populate_array
        a, shp = args
        src = context.make_array(signature.args[0])(context, builder, a)
        out = context.make_array(retty)(context, builder)
        dims = cgutils.unpack_tuple(builder, shp, ndim)
        # the element size as a constant (not the source's runtime field): LLVM then knows the
        # innermost stride and vectorises loops over the view
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(arr.dtype)))
        strides, acc = [], itemsize
        for d in reversed(dims):
            strides.insert(0, acc)
            acc = builder.mul(acc, d)
        populate_array(out, data=src.data, shape=dims, strides=strides, itemsize=itemsize, meminfo=src.meminfo,
                       parent=src.parent)
        context.nrt.incref(builder, retty, out._getvalue())
        return out._getvalue()

    return sig, codegen


@intrinsic
def at_address(typingctx, addr, shape, dtype):
    """The C-contiguous array of ``shape`` and ``dtype`` (a NumPy scalar class) whose data starts
    at the integer address ``addr``, owning nothing: the caller keeps the memory alive and in
    bounds (how :mod:`minicaffe.executor` hands its kernels their arrays, from a table of
    addresses)."""
    ndim = len(shape)
    dt = dtype.dtype
    retty = types.Array(dt, ndim, "C")
    sig = retty(addr, shape, dtype)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        from numba.np.arrayobj import populate_array
        a, shp, _ = args
        out = context.make_array(retty)(context, builder)
        dims = cgutils.unpack_tuple(builder, shp, ndim)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(dt)))
        strides, acc = [], itemsize
        for d in reversed(dims):
            strides.insert(0, acc)
            acc = builder.mul(acc, d)
        data = builder.inttoptr(a, context.get_data_type(dt).as_pointer())
        populate_array(out, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=None, parent=None)
        return out._getvalue()

    return sig, codegen


@intrinsic
def cycles(typingctx):
    """The CPU's time-stamp counter (``llvm.readcyclecounter``: constant-rate ticks on x86): the
    per-kernel clock of a profiled program run, a few cycles to read."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        mod = builder.module
        fn = mod.globals.get("llvm.readcyclecounter") or ir.Function(
            mod, ir.FunctionType(_I64, []), name="llvm.readcyclecounter")
        return builder.call(fn, [])

    return sig, codegen


@njit(cache=True, inline="always")
def tile_task(t, nblk, P, G):
    """A dynamically scheduled tile kernel's task number -> (outer, group, panel, block): tasks run
    block fastest, then panel, group and the outer index (image, or Winograd tile position), so
    consecutive tasks share a weight panel."""
    blk = t % nblk
    r = t // nblk
    pnl = r % P
    r = r // P
    return r // G, r % G, pnl, blk


def _make_dw_tile(r):
    """An intrinsic ``dw(x, xb, xstep, toffs, wofs, nt, w, c0, bias, lo, hi, y, yb, ystep)``: r output
    pixels x one vector of W channels of a depthwise convolution on channels-last data, the
    accumulators in registers across the taps:

        y[yb + q*ystep + c] = clip(bias[c0 + c] + sum_t x[xb + q*xstep + toffs[t] + c] * w[wofs[t] + c0 + c], lo, hi)

    for q < r, c < W, t < nt (a NaN stays NaN). x, w, bias, y: float32 1-D; toffs, wofs: int64 1-D
    (each tap's offset in x relative to a pixel's base, and where its weights start in w); the
    other arguments int64 / float32 scalars. No bounds checks.
    """
    @intrinsic
    def dw(typingctx, x, xb, xstep, toffs, wofs, nt, w, c0, bias, lo, hi, y, yb, ystep):
        sig = types.void(x, xb, xstep, toffs, wofs, nt, w, c0, bias, lo, hi, y, yb, ystep)

        def codegen(context, builder, signature, args):
            x_v, xb_v, xstep_v, toffs_v, wofs_v, nt_v, w_v, c0_v, bias_v, lo_v, hi_v, y_v, yb_v, ystep_v = args
            i64 = _I64
            vptr = _VEC.as_pointer()
            arr = [context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 3, 4, 6, 8, 11)]
            X, T, WO, Wt, Bias, Y = arr
            fma = _fma(builder)

            def vload(base, idx):
                return builder.load(builder.bitcast(builder.gep(base, [idx]), vptr), align=4)

            bvec = vload(Bias, c0_v)
            xq = [builder.add(xb_v, builder.mul(xstep_v, ir.Constant(i64, q))) for q in range(r)]
            t, accs, close = _counted_loop(builder, "dw", nt_v, [bvec] * r)
            toff = builder.load(builder.gep(T, [t]))
            wv = vload(Wt, builder.add(builder.load(builder.gep(WO, [t])), c0_v))
            close([builder.call(fma, [vload(X, builder.add(xq[q], toff)), wv, accs[q]]) for q in range(r)])
            lo, hi = _splat(builder, lo_v), _splat(builder, hi_v)
            for q in range(r):
                builder.store(_clip(builder, accs[q], lo, hi), builder.bitcast(builder.gep(
                    Y, [builder.add(yb_v, builder.mul(ystep_v, ir.Constant(i64, q)))]), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return dw


def _make_dw_rows(r, kw, sw):
    """An intrinsic ``dw(x, xb, rstep, cstep, kh, w, c0, bias, lo, hi, y, yb, ystep)``: r
    consecutive output pixels x one vector of W channels of a depthwise convolution with kw
    columns and column stride sw (both fixed here) on zero-padded channels-last rows:

        y[yb + q*ystep + c] = clip(bias[c0 + c] + sum_{i<kh, j<kw} x[xb + i*rstep + (q*sw + j)*cstep + c]
                                   * w[(i*kw + j)*cstep + c0 + c], lo, hi)

    for q < r, c < W (a NaN stays NaN). Per kernel row i the (r - 1)*sw + kw input vectors the r
    pixels read are loaded once and each serves every tap that reads it (a 3x3 stride-1 tile of 4
    pixels: 9 loads for 12 multiply-adds, against 2 per multiply-add one tap at a time). x, w,
    bias, y: float32 1-D; the rest int64 / float32 scalars. No bounds checks.
    """
    ncols = (r - 1) * sw + kw

    @intrinsic
    def dw(typingctx, x, xb, rstep, cstep, kh, w, c0, bias, lo, hi, y, yb, ystep):
        sig = types.void(x, xb, rstep, cstep, kh, w, c0, bias, lo, hi, y, yb, ystep)

        def codegen(context, builder, signature, args):
            x_v, xb_v, rstep_v, cstep_v, kh_v, w_v, c0_v, bias_v, lo_v, hi_v, y_v, yb_v, ystep_v = args
            i64 = _I64
            vptr = _VEC.as_pointer()
            X, Wt, Bias, Y = [context.make_array(signature.args[k])(context, builder, args[k]).data
                              for k in (0, 5, 7, 10)]
            fma = _fma(builder)

            def vload(base, idx):
                return builder.load(builder.bitcast(builder.gep(base, [idx]), vptr), align=4)

            def const(v):
                return ir.Constant(i64, v)

            bvec = vload(Bias, c0_v)
            i, accs, close = _counted_loop(builder, "dwr", kh_v, [bvec] * r)
            xrow = builder.add(xb_v, builder.mul(i, rstep_v))
            cols = [vload(X, builder.add(xrow, builder.mul(cstep_v, const(col)))) for col in range(ncols)]
            wrow = builder.add(builder.mul(builder.mul(i, const(kw)), cstep_v), c0_v)
            ws = [vload(Wt, builder.add(wrow, builder.mul(cstep_v, const(j)))) for j in range(kw)]
            new = list(accs)
            for j in range(kw):
                for q in range(r):
                    new[q] = builder.call(fma, [cols[q * sw + j], ws[j], new[q]])
            close(new)
            lo, hi = _splat(builder, lo_v), _splat(builder, hi_v)
            for q in range(r):
                builder.store(_clip(builder, accs[q], lo, hi), builder.bitcast(builder.gep(
                    Y, [builder.add(yb_v, builder.mul(ystep_v, const(q)))]), vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return dw


#: pixels per depthwise tile
DW_R = 4
#: depthwise tiles: DW_R output pixels x one channel vector, and one pixel (rows narrower than
#: DW_R), any kernel through a tap table
dw_tile = _make_dw_tile(DW_R)
dw_tile1 = _make_dw_tile(1)
#: DW_R pixels x one channel vector of the common kernels (3x3, 5x5; stride 1, 2), input columns
#: shared between taps
dw_rows_3s1 = _make_dw_rows(DW_R, 3, 1)
dw_rows_3s2 = _make_dw_rows(DW_R, 3, 2)
dw_rows_5s1 = _make_dw_rows(DW_R, 5, 1)
dw_rows_5s2 = _make_dw_rows(DW_R, 5, 2)
#: the same, 7 pixels wide: rows of 7, 14, 28, 56, 112 pixels (EfficientNet's, MobileNet's) in
#: whole tiles, fewer loads per multiply-add. Only with 32 vector registers (AVX-512): a 5x5
#: stride-2 tile holds 7 accumulators, 17 input columns and 5 weight vectors
DW_R7 = 7
DW7_ON = W == 16
dw7_rows_3s1 = _make_dw_rows(DW_R7, 3, 1)
dw7_rows_3s2 = _make_dw_rows(DW_R7, 3, 2)
dw7_rows_5s1 = _make_dw_rows(DW_R7, 5, 1)
dw7_rows_5s2 = _make_dw_rows(DW_R7, 5, 2)
