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

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _host_vector_width():
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


def _make_tile(mr, nv):
    """An intrinsic ``tile(xf, pix, offs, k_count, bp, cs)`` with an mr x (nv * W) register block:
    cs[p * nr + r] = sum_k xf[pix[p] + offs[k]] * bp[k * nr + r] for p < mr, r < nr = nv * W.

    xf: float32 1-D (the A operand, read in place), pix: int64 1-D (mr row base indices into xf),
    offs: int64 1-D (K offsets), k_count: int64 (K), bp: float32 1-D packed B panel (K x nr,
    row-major), cs: float32 1-D scratch (mr x nr), overwritten. No bounds checks: the caller
    guarantees every address is inside its array.
    """
    nr = nv * W

    @intrinsic
    def tile(typingctx, xf, pix, offs, k_count, bp, cs):
        sig = types.void(xf, pix, offs, k_count, bp, cs)

        def codegen(context, builder, signature, args):
            xf_v, pix_v, offs_v, k_v, bp_v, cs_v = args
            f32 = ir.FloatType()
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)
            vec = ir.VectorType(f32, W)
            vptr = vec.as_pointer()
            X = context.make_array(signature.args[0])(context, builder, xf_v).data
            Pix = context.make_array(signature.args[1])(context, builder, pix_v).data
            O = context.make_array(signature.args[2])(context, builder, offs_v).data
            B = context.make_array(signature.args[4])(context, builder, bp_v).data
            Cs = context.make_array(signature.args[5])(context, builder, cs_v).data
            mod = builder.module
            fname = f"llvm.fma.v{W}f32"
            fma = mod.globals.get(fname) or ir.Function(mod, ir.FunctionType(vec, [vec, vec, vec]), name=fname)
            rows = [builder.gep(X, [builder.load(builder.gep(Pix, [ir.Constant(i64, p)]))]) for p in range(mr)]
            fn = builder.function
            pre = builder.block
            loop = fn.append_basic_block("tile_loop")
            body = fn.append_basic_block("tile_body")
            done = fn.append_basic_block("tile_done")
            zero = ir.Constant(vec, [0.0] * W)
            splat = ir.Constant(ir.VectorType(i32, W), [0] * W)
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            accs = [builder.phi(vec) for _ in range(mr * nv)]
            k.add_incoming(ir.Constant(i64, 0), pre)
            for a in accs:
                a.add_incoming(zero, pre)
            builder.cbranch(builder.icmp_signed("<", k, k_v), body, done)
            builder.position_at_end(body)
            off = builder.load(builder.gep(O, [k]))
            bb = builder.gep(B, [builder.mul(k, ir.Constant(i64, nr))])
            bvs = [builder.load(builder.bitcast(builder.gep(bb, [ir.Constant(i64, h * W)]), vptr), align=4)
                   for h in range(nv)]
            new = []
            for p in range(mr):
                a = builder.load(builder.gep(rows[p], [off]))
                av = builder.insert_element(ir.Constant(vec, ir.Undefined), a, ir.Constant(i32, 0))
                av = builder.shuffle_vector(av, ir.Constant(vec, ir.Undefined), splat)
                for h in range(nv):
                    new.append(builder.call(fma, [av, bvs[h], accs[p * nv + h]]))
            k1 = builder.add(k, ir.Constant(i64, 1))
            end = builder.block
            builder.branch(loop)
            k.add_incoming(k1, end)
            for a, n in zip(accs, new):
                a.add_incoming(n, end)
            builder.position_at_end(done)
            for p in range(mr):
                for h in range(nv):
                    ptr = builder.bitcast(builder.gep(Cs, [ir.Constant(i64, p * nr + h * W)]), vptr)
                    builder.store(accs[p * nv + h], ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


#: the convolution tile: MR output pixels x NR output channels
indirect_tile = _make_tile(MR, 2)


@intrinsic
def fetch_add(typingctx, counter, index, value):
    """Atomically add ``value`` to ``counter[index]`` (int64 1-D array) and return the old value:
    the shared task counter of a dynamically scheduled kernel (threads take the next chunk of
    tasks as they finish, so a thread that shares its core with another process does less)."""
    sig = types.int64(counter, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        arr, idx, val = args
        data = context.make_array(signature.args[0])(context, builder, arr).data
        return builder.atomic_rmw("add", builder.gep(data, [idx]), val, "monotonic")

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
