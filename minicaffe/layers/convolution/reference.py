"""NumPy references of the convolution: the forward, its backward, and Caffe's output-size rule.

Plain NumPy (one tensordot per kernel tap and group), kept as the algorithmic statement every fast
kernel is tested against. Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, kh, kw)`` (OIHW),
``pad = (top, bottom, left, right)``. It does not try to be fast.
"""
from __future__ import annotations

import numpy as np


def conv_out_size(size, k, stride, pad_lo, pad_hi, dilation=1):
    """Caffe rounds convolution output sizes down."""
    return (size + pad_lo + pad_hi - (dilation * (k - 1) + 1)) // stride + 1


def conv_out_hw(H, W, kh, kw, stride, pad, dilation=(1, 1)):
    """The output plane (Ho, Wo) of a kh x kw convolution of an H x W input: :func:`conv_out_size`
    along each axis; stride (sh, sw), pad (top, bottom, left, right), dilation (dh, dw)."""
    return (conv_out_size(H, kh, stride[0], pad[0], pad[1], dilation[0]),
            conv_out_size(W, kw, stride[1], pad[2], pad[3], dilation[1]))


# ---------------------------------------------------------------------------------------------
# NumPy reference


def convolution_reference(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """x: (N, C, H, W), w: (M, C/group, kh, kw), b: (M,) or None -> (N, M, Ho, Wo).

    pad = (top, bottom, left, right). Plain NumPy: one tensordot per kernel tap and group.
    """
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=np.float32)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    Mg = M // group
    y = np.zeros((N, M, Ho, Wo), dtype=np.float32)
    for g in range(group):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        wg = w[g * Mg:(g + 1) * Mg]
        acc = np.zeros((N, Mg, Ho, Wo), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (Ho - 1) + 1: sh, j * dw: j * dw + sw * (Wo - 1) + 1: sw]
                # (N, Cg, Ho, Wo) x (Mg, Cg) -> (N, Ho, Wo, Mg) -> NCHW
                acc += np.tensordot(patch, wg[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
        y[:, g * Mg:(g + 1) * Mg] = acc
    if b is not None:
        y += b.reshape(1, M, 1, 1)
    return y



def convolution_backward_reference(dy, x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """dy: (N, M, Ho, Wo), x: (N, C, H, W), w: (M, C/group, kh, kw) -> (dx, dw, db).

    dx: (N, C, H, W), dw: (M, C/group, kh, kw), db: (M,). Plain NumPy, one tensordot per kernel
    tap and group (the transpose of :func:`convolution_reference`); keeps the inputs' dtype, so
    float64 inputs give a float64 gradient for finite-difference checks.
    """
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw_ = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = dy.shape[2], dy.shape[3]
    dt = np.result_type(dy, x, w)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=dt)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape, dtype=dt)
    Mg = M // group
    for g in range(group):
        dyg = dy[:, g * Mg:(g + 1) * Mg]                      # (N, Mg, Ho, Wo)
        wg = w[g * Mg:(g + 1) * Mg]
        for i in range(kh):
            for j in range(kw):
                hs = slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh)
                ws = slice(j * dw_, j * dw_ + sw * (Wo - 1) + 1, sw)
                patch = xp[:, g * Cg:(g + 1) * Cg, hs, ws]     # (N, Cg, Ho, Wo)
                dw[g * Mg:(g + 1) * Mg, :, i, j] = np.tensordot(dyg, patch, axes=([0, 2, 3], [0, 2, 3]))
                # (N, Mg, Ho, Wo) x (Mg, Cg) -> (N, Ho, Wo, Cg) -> NCHW
                dxp[:, g * Cg:(g + 1) * Cg, hs, ws] += np.tensordot(dyg, wg[:, :, i, j],
                                                                    axes=([1], [0])).transpose(0, 3, 1, 2)
    dx = np.ascontiguousarray(dxp[:, :, pt:pt + H, pl:pl + W])
    return dx, dw, dy.sum(axis=(0, 2, 3)).astype(dt)

