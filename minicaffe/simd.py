"""SIMD register-blocked micro-kernel for Numba, written as LLVM vector IR.

LLVM does not turn a plain Numba loop nest into a register-blocked GEMM kernel (constant-trip loops
are unrolled before the loop vectoriser runs, heap accumulators are not promoted to registers), so
this module emits one through ``numba.extending.intrinsic``: ``MR x NR`` accumulators held in
``<W x float>`` registers (``NR = 2 * W``), one ``llvm.fma`` per accumulator and k. ``W`` is the
host's float vector width (16 with AVX-512, else 8), read once from LLVM's host CPU features.

:func:`indirect_tile` is the kernel: the A operand is read through an offset table (an
"indirection" in the manner of indirect convolution, Dukhan 2019), so a convolution needs no
im2col copy. Nothing here knows about layers; see ``minicaffe.layers.convolution.direct``.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
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


@intrinsic
def indirect_tile(typingctx, xf, pix, offs, k_count, bp, cs):
    """cs[p * NR + r] = sum_k xf[pix[p] + offs[k]] * bp[k * NR + r], p < MR, r < NR.

    xf: float32 1-D (the padded input), pix: int64 1-D (MR pixel base indices into xf), offs:
    int64 1-D (K tap offsets), k_count: int64 (K), bp: float32 1-D packed panel (K x NR,
    row-major), cs: float32 1-D scratch (MR x NR), overwritten. No bounds checks: the caller
    guarantees every address is inside its array.
    """
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
        # one A pointer per output pixel of the tile
        rows = [builder.gep(X, [builder.load(builder.gep(Pix, [ir.Constant(i64, p)]))]) for p in range(MR)]
        fn = builder.function
        pre = builder.block
        loop = fn.append_basic_block("ind_loop")
        body = fn.append_basic_block("ind_body")
        done = fn.append_basic_block("ind_done")
        zero = ir.Constant(vec, [0.0] * W)
        splat = ir.Constant(ir.VectorType(i32, W), [0] * W)
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        accs = [builder.phi(vec) for _ in range(2 * MR)]
        k.add_incoming(ir.Constant(i64, 0), pre)
        for a in accs:
            a.add_incoming(zero, pre)
        builder.cbranch(builder.icmp_signed("<", k, k_v), body, done)
        builder.position_at_end(body)
        off = builder.load(builder.gep(O, [k]))
        bb = builder.gep(B, [builder.mul(k, ir.Constant(i64, NR))])
        b0 = builder.load(builder.bitcast(bb, vptr), align=4)
        b1 = builder.load(builder.bitcast(builder.gep(bb, [ir.Constant(i64, W)]), vptr), align=4)
        new = []
        for p in range(MR):
            a = builder.load(builder.gep(rows[p], [off]))
            av = builder.insert_element(ir.Constant(vec, ir.Undefined), a, ir.Constant(i32, 0))
            av = builder.shuffle_vector(av, ir.Constant(vec, ir.Undefined), splat)
            new.append(builder.call(fma, [av, b0, accs[2 * p]]))
            new.append(builder.call(fma, [av, b1, accs[2 * p + 1]]))
        k1 = builder.add(k, ir.Constant(i64, 1))
        end = builder.block
        builder.branch(loop)
        k.add_incoming(k1, end)
        for a, n in zip(accs, new):
            a.add_incoming(n, end)
        builder.position_at_end(done)
        for p in range(MR):
            for h in range(2):
                ptr = builder.bitcast(builder.gep(Cs, [ir.Constant(i64, p * NR + h * W)]), vptr)
                builder.store(accs[2 * p + h], ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen
