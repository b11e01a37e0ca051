"""Per-kernel tests: every Numba CPU kernel against its NumPy reference on odd shapes, and the
references against plain nested-loop implementations written here (Caffe's test style)."""
import numpy as np
import pytest
from conftest import assert_close
from kernel_cases import CONV, LRN, POOL, rnd

from minicaffe.layers import concat, eltwise, relu, softmax
from minicaffe.layers import convolution as C
from minicaffe.layers import inner_product as ip
from minicaffe.layers import lrn as L
from minicaffe.layers import pooling as P
from minicaffe.layers.convolution import cache as CC
from minicaffe.layers.convolution import im2col as CI
from minicaffe.layers.convolution import layer as CL
from minicaffe.layers.convolution import winograd as CW
from minicaffe.layers.pooling import pool_out_size


def conv_naive(x, w, b, stride, pad, dil, group):
    N, Cc, H, W = x.shape
    M, Cg, kh, kw = w.shape
    Ho = C.conv_out_size(H, kh, stride[0], pad[0], pad[1], dil[0])
    Wo = C.conv_out_size(W, kw, stride[1], pad[2], pad[3], dil[1])
    y = np.zeros((N, M, Ho, Wo))
    for n in range(N):
        for m in range(M):
            g = m // (M // group)
            for oh in range(Ho):
                for ow in range(Wo):
                    s = 0.0 if b is None else float(b[m])
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                ih = oh * stride[0] - pad[0] + i * dil[0]
                                iw = ow * stride[1] - pad[2] + j * dil[1]
                                if 0 <= ih < H and 0 <= iw < W:
                                    s += float(x[n, g * Cg + c, ih, iw]) * float(w[m, c, i, j])
                    y[n, m, oh, ow] = s
    return y


@pytest.mark.parametrize("case", CONV, ids=[c[0] for c in CONV])
def test_conv(case):
    name, xs, ws, stride, pad, dil, group, bias = case
    rng = np.random.default_rng(0)
    x, w = rnd(rng, *xs), rnd(rng, *ws)
    b = rnd(rng, ws[0]) if bias else None
    ref = C.convolution_reference(x, w, b, stride, pad, dil, group)
    assert_close(ref, conv_naive(x, w, b, stride, pad, dil, group), 1e-5, f"conv reference vs naive {name}")
    assert_close(C.convolution_cpu(x, w, b, stride, pad, dil, group), ref, 1e-5, f"conv cpu {name}")


def test_conv_cpu_chunked_batch(monkeypatch):
    """The im2col buffer is bounded; batches larger than it are processed in chunks."""
    monkeypatch.setattr(CI, "IM2COL_BUDGET", 3 * 27 * 20 * 4)
    rng = np.random.default_rng(1)
    x, w, b = rnd(rng, 7, 3, 6, 7), rnd(rng, 4, 3, 3, 3), rnd(rng, 4)
    assert_close(C.convolution_cpu(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                 C.convolution_reference(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1), 1e-5, "chunked conv")


@pytest.mark.parametrize("nb", [1, 2])
def test_conv_cpu_chunks_with_a_single_image_tail(monkeypatch, nb):
    """nb images per im2col chunk; 3 images leave a one-image tail that takes the in-place path."""
    rng = np.random.default_rng(2)
    x, w, b = rnd(rng, 3, 4, 7, 6), rnd(rng, 6, 2, 3, 2), rnd(rng, 6)
    monkeypatch.setattr(CI, "IM2COL_BUDGET", nb * (4 * 3 * 2) * (7 * 5) * 4)
    assert_close(C.convolution_cpu(x, w, b, (1, 1), (1, 1, 0, 0), (1, 1), 2),
                 C.convolution_reference(x, w, b, (1, 1), (1, 1, 0, 0), (1, 1), 2), 1e-5, f"chunks of {nb}")


# Winograd F(4x4,3x3): (id, x shape, w shape, pad(t,b,l,r), group, bias, chunk budget or None)
WINOGRAD = [
    ("odd_13x13_pad1", (8, 16, 13, 13), (24, 16, 3, 3), (1, 1, 1, 1), 1, True, None),
    ("even_12x10_group2", (9, 32, 12, 10), (32, 16, 3, 3), (1, 1, 1, 1), 2, True, None),
    ("no_pad_odd_out", (8, 16, 8, 7), (16, 16, 3, 3), (0, 0, 0, 0), 1, False, None),
    ("asym_pad", (8, 16, 9, 10), (20, 16, 3, 3), (1, 0, 2, 1), 1, True, None),
    ("pad2_tiny", (8, 16, 3, 4), (16, 16, 3, 3), (2, 2, 2, 2), 1, True, None),
    ("chunked_tail", (9, 16, 7, 7), (16, 16, 3, 3), (1, 1, 1, 1), 1, True, 2 * 36 * 16 * 4 * 4),
    ("5x5_group2_conv2like", (8, 32, 13, 13), (32, 16, 5, 5), (2, 2, 2, 2), 2, True, None),
    ("5x5_nopad_chunked", (9, 16, 9, 8), (16, 16, 5, 5), (0, 0, 0, 0), 1, False, 2 * 36 * 16 * 4 * 2 * 4),
    ("7x7_asym_pad", (8, 16, 10, 11), (16, 16, 7, 7), (3, 2, 1, 3), 1, True, None),
]


@pytest.mark.parametrize("case", WINOGRAD, ids=[c[0] for c in WINOGRAD])
def test_conv_winograd_vs_reference(case, monkeypatch):
    name, xs, ws, pad, group, bias, budget = case
    if budget:
        monkeypatch.setattr(CW, "WINOGRAD_BUDGET", budget)
    rng = np.random.default_rng(3)
    x, w = rnd(rng, *xs, scale=10), rnd(rng, *ws)
    b = rnd(rng, ws[0]) if bias else None
    ref = C.convolution_reference(x.astype(np.float64), w.astype(np.float64),
                                  None if b is None else b.astype(np.float64), (1, 1), pad, (1, 1), group)
    assert_close(C.convolution_winograd_cpu(x, w, b, pad, group), ref, 1e-5, f"winograd {name}")
    # the cpu dispatcher sends kernels up to 6x6 to Winograd and larger ones to wide im2col
    assert C.winograd_applies(w, (1, 1), (1, 1), group, xs) == (ws[2] <= 6)
    monkeypatch.setattr(CL, "WINOGRAD", True)
    assert_close(C.convolution_cpu(x, w, b, (1, 1), pad, (1, 1), group), ref, 1e-5, f"cpu dispatch {name}")


def test_winograd_filter_cache_never_stale():
    """The filter transform is cached per weight array; editing the weights in place (as training
    and ``net.params[...][0][...] = ...`` do) must recompute it, never reuse the old one."""
    rng = np.random.default_rng(5)
    x, w, b = rnd(rng, 2, 16, 9, 9, scale=10), rnd(rng, 24, 16, 3, 3), rnd(rng, 24)
    U1 = C.winograd_filters(w)
    assert C.winograd_filters(w) is U1                      # unchanged values: served from the cache
    assert_close(U1, CW._winograd_filters_uncached(w), 0, "cached transform")
    for edit in (lambda a: a.__setitem__((3, 5, 1, 2), a[3, 5, 1, 2] + 1.0),   # one element
                 lambda a: a.__imul__(np.float32(0.5))):                        # every element
        edit(w)
        assert_close(C.winograd_filters(w), CW._winograd_filters_uncached(w), 0, "transform after an in-place edit")
        ref = C.convolution_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                      (1, 1), (1, 1, 1, 1), (1, 1), 1)
        assert_close(C.convolution_cpu(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1), ref, 1e-5, "conv after an edit")


def test_winograd_filter_cache_freed_with_the_weights():
    """A deleted weight array takes its cached transform with it (no growth across many nets)."""
    import gc
    rng = np.random.default_rng(7)
    w = rnd(rng, 24, 16, 3, 3)
    C.winograd_filters(w)
    key = (id(w), w.shape, ("winograd", 1))
    assert key in CC._FILTER_CACHE
    w[0, 0, 0, 0] += 1.0                      # a stale entry is replaced, not registered twice
    C.winograd_filters(w)
    del w
    gc.collect()
    assert key not in CC._FILTER_CACHE, "the transform outlived its weight array"


# stride-phase wide im2col: (id, x shape, w shape, stride, pad(t,b,l,r), group, chunk budget or None)
PHASE = [
    ("conv1_like_11x11s4", (2, 3, 35, 35), (16, 3, 11, 11), 4, (0, 0, 0, 0), 1, None),
    ("k3s2_asym_pad_group2", (3, 4, 9, 10), (6, 2, 3, 3), 2, (1, 0, 2, 1), 2, None),
    ("kernel_below_stride", (1, 2, 11, 13), (3, 2, 2, 2), 3, (0, 0, 0, 0), 1, None),
    ("k7s3_pad_chunked_tail", (5, 3, 17, 16), (4, 3, 7, 7), 3, (3, 2, 1, 3), 1, 2 * 147 * 42 * 4),  # 2 per chunk
]


@pytest.mark.parametrize("case", PHASE, ids=[c[0] for c in PHASE])
def test_conv_phase_vs_reference(case, monkeypatch):
    name, xs, ws, s, pad, group, budget = case
    if budget:
        monkeypatch.setattr(CI, "IM2COL_BUDGET", budget)
    rng = np.random.default_rng(6)
    x, w, b = rnd(rng, *xs, scale=10), rnd(rng, *ws), rnd(rng, ws[0])
    ref = conv_naive(x, w, b, (s, s), pad, (1, 1), group)
    assert_close(C.convolution_phase_cpu(x, w, b, (s, s), pad, group), ref, 1e-5, f"phase {name}")
    assert_close(C.convolution_cpu(x, w, b, (s, s), pad, (1, 1), group), ref, 1e-5, f"cpu dispatch {name}")


def test_winograd_not_used_where_it_does_not_apply():
    w = np.zeros((16, 16, 3, 3), np.float32)
    assert not C.winograd_applies(w, (2, 2), (1, 1), 1, (1, 16, 9, 9))       # strided
    assert not C.winograd_applies(w, (1, 1), (2, 2), 1, (1, 16, 9, 9))       # dilated
    assert C.winograd_applies(np.zeros((16, 16, 5, 5), np.float32), (1, 1), (1, 1), 1, (1, 16, 9, 9))
    assert C.winograd_applies(np.zeros((16, 16, 5, 5), np.float32), (1, 1), (1, 1), 1, (8, 16, 9, 9))
    assert not C.winograd_applies(np.zeros((16, 16, 7, 7), np.float32), (1, 1), (1, 1), 1, (8, 16, 9, 9))
    assert not C.winograd_applies(np.zeros((16, 8, 3, 3), np.float32), (1, 1), (1, 1), 1, (8, 8, 9, 9))  # few channels
    assert not C.winograd_applies(np.zeros((16, 16, 3, 5), np.float32), (1, 1), (1, 1), 1, (8, 16, 9, 9))
    assert not C.winograd_applies(np.zeros((16, 1, 3, 3), np.float32), (1, 1), (1, 1), 16, (1, 16, 9, 9))


def pool_naive(x, method, k, s, p, ceil):
    N, Cc, H, W = x.shape
    Ho, Wo = pool_out_size(H, k[0], s[0], p[0], ceil), pool_out_size(W, k[1], s[1], p[1], ceil)
    y = np.zeros((N, Cc, Ho, Wo), np.float32)
    for n in range(N):
        for c in range(Cc):
            for oh in range(Ho):
                for ow in range(Wo):
                    hs, ws = oh * s[0] - p[0], ow * s[1] - p[1]
                    if method == 0:
                        vals = [x[n, c, i, j] for i in range(max(hs, 0), min(hs + k[0], H))
                                for j in range(max(ws, 0), min(ws + k[1], W))]
                        y[n, c, oh, ow] = max(vals)
                    else:
                        he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
                        size = (he - hs) * (we - ws)
                        tot = sum(float(x[n, c, i, j]) for i in range(max(hs, 0), min(he, H))
                                  for j in range(max(ws, 0), min(we, W)))
                        y[n, c, oh, ow] = tot / size
    return y


def test_pool_sizes_match_caffe_rules():
    assert pool_out_size(13, 3, 2, 0) == 6        # CaffeNet pool5
    assert pool_out_size(54, 3, 2, 0) == 27       # conv1 at 224: ceil gives 27 (floor would give 26)
    assert pool_out_size(54, 3, 2, 0, ceil_mode=False) == 26
    assert pool_out_size(112, 3, 2, 0) == 56      # GoogLeNet pool1
    assert pool_out_size(5, 2, 2, 1) == 3         # ceil gives 4, but the last window starts in the padding: clipped
    assert C.conv_out_size(227, 11, 4, 0, 0) == 55 and C.conv_out_size(224, 11, 4, 0, 0) == 54


@pytest.mark.parametrize("case", POOL, ids=[c[0] for c in POOL])
def test_pool(case):
    name, xs, method, k, s, p, ceil = case
    x = rnd(np.random.default_rng(2), *xs)
    out_hw = (pool_out_size(xs[2], k[0], s[0], p[0], ceil), pool_out_size(xs[3], k[1], s[1], p[1], ceil))
    ref = P.pooling_reference(x, method, k, s, p, out_hw)
    assert_close(ref, pool_naive(x, method, k, s, p, ceil), 1e-6, f"pool reference vs naive {name}")
    assert_close(P.pooling_cpu(x, method, k, s, p, out_hw), ref, 1e-6, f"pool cpu {name}")


@pytest.mark.parametrize("case", POOL, ids=[c[0] for c in POOL])
@pytest.mark.parametrize("out", ["nhwc", "padded", "nchw"])
def test_pool_channels_last(case, out):
    """The channels-last pool kernel of whole-forward programs: every window rule of the NCHW one,
    stored channels last, inside a zero border (garbage before) or NCHW."""
    name, xs, method, k, s, p, ceil = case
    x = rnd(np.random.default_rng(2), *xs)
    out_hw = (pool_out_size(xs[2], k[0], s[0], p[0], ceil), pool_out_size(xs[3], k[1], s[1], p[1], ceil))
    ref = P.pooling_reference(x, method, k, s, p, out_hw)
    pad = (2, 1, 1, 3) if out == "padded" else (0, 0, 0, 0)
    N, Cc = xs[:2]
    Ho, Wo = out_hw
    shape = (N, Cc, Ho, Wo) if out == "nchw" else (N, Ho + pad[0] + pad[1], Wo + pad[2] + pad[3], Cc)
    y = P.pooling_nhwc_cpu(x.transpose(0, 2, 3, 1), method, k, s, p, out_hw, nchw_out=out == "nchw", out_pad=pad,
                           out=np.full(shape, np.nan, dtype=np.float32))
    if out == "nchw":
        assert_close(y, ref, 1e-6, f"pool channels last -> NCHW {name}")
        return
    assert_close(y[:, pad[0]:pad[0] + Ho, pad[2]:pad[2] + Wo].transpose(0, 3, 1, 2), ref, 1e-6,
                 f"pool channels last {name}")
    border = y.copy()
    border[:, pad[0]:pad[0] + Ho, pad[2]:pad[2] + Wo] = 0
    assert not border.any(), f"pool channels last {name}: the zero border is not zero"


@pytest.mark.parametrize("case", [c for c in LRN if c[6] == 0], ids=[c[0] for c in LRN if c[6] == 0])
@pytest.mark.parametrize("pool", [False, True])
def test_pool_lrn_channels_last(case, pool):
    """An across-channel LRN alone (a 1x1 pool) and after a MAX pool in one channels-last pass."""
    name, xs, size, alpha, beta, k, region = case
    xs = (xs[0], xs[1], xs[2] + 4, xs[3] + 3)
    x = rnd(np.random.default_rng(3), *xs, scale=3.0)
    kern, stride = ((3, 3), (2, 2)) if pool else ((1, 1), (1, 1))
    out_hw = (pool_out_size(xs[2], kern[0], stride[0], 0), pool_out_size(xs[3], kern[1], stride[1], 0))
    pooled = P.pooling_reference(x, 0, kern, stride, (0, 0), out_hw)
    ref = L.lrn_reference(pooled, size, alpha, beta, k, region)
    y = P.pooling_nhwc_cpu(x.transpose(0, 2, 3, 1), 0, kern, stride, (0, 0), out_hw, lrn=(size, alpha, beta, k))
    assert_close(y.transpose(0, 3, 1, 2), ref, 2e-6, f"pool {pool} + lrn channels last {name}")


def lrn_naive(x, size, alpha, beta, k, region):
    N, Cc, H, W = x.shape
    y = np.zeros_like(x, dtype=np.float64)
    pre = (size - 1) // 2
    for n in range(N):
        for c in range(Cc):
            for h in range(H):
                for w in range(W):
                    if region == 0:
                        s = sum(float(x[n, cc, h, w]) ** 2 for cc in range(max(0, c - pre), min(Cc, c - pre + size)))
                        scale = k + alpha / size * s
                    else:
                        s = sum(float(x[n, c, i, j]) ** 2 for i in range(max(0, h - pre), min(H, h - pre + size))
                                for j in range(max(0, w - pre), min(W, w - pre + size)))
                        scale = 1 + alpha / size ** 2 * s
                    y[n, c, h, w] = x[n, c, h, w] * scale ** -beta
    return y


@pytest.mark.parametrize("case", LRN, ids=[c[0] for c in LRN])
def test_lrn(case):
    name, xs, size, alpha, beta, k, region = case
    x = rnd(np.random.default_rng(3), *xs, scale=3.0)
    ref = L.lrn_reference(x, size, alpha, beta, k, region)
    assert_close(ref, lrn_naive(x, size, alpha, beta, k, region), 1e-6, f"lrn reference vs naive {name}")
    assert_close(L.lrn_cpu(x, size, alpha, beta, k, region), ref, 1e-6, f"lrn cpu {name}")


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product(n, transpose):
    rng = np.random.default_rng(4)
    x, w, b = rnd(rng, n, 37), rnd(rng, 11, 37), rnd(rng, 11)
    wt = np.ascontiguousarray(w.T) if transpose else w
    ref = ip.inner_product_reference(x, wt, b, transpose)
    naive = np.array([[sum(float(x[i, k]) * float(w[m, k]) for k in range(37)) + b[m] for m in range(11)]
                      for i in range(n)])
    assert_close(ref, naive, 1e-5, "ip reference vs naive")
    assert_close(ip.inner_product_cpu(x, wt, b, transpose), ref, 1e-5, "ip cpu")


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu(slope):
    x = rnd(np.random.default_rng(5), 3, 4, 5, 6)
    ref = relu.relu_reference(x, slope)
    assert_close(ref, np.maximum(x, 0) + slope * np.minimum(x, 0), 0, "relu reference")
    assert_close(relu.relu_cpu(x, slope), ref, 0, "relu cpu")
    y = x.copy()
    out = relu.relu_cpu(y, slope, inplace=True)
    assert out is y and np.array_equal(y, ref)


def test_clip():
    x = rnd(np.random.default_rng(6), 2, 3, 4, 5, scale=5)
    ref = relu.clip_reference(x, 0, 6)
    assert ref.min() == 0 and ref.max() == 6
    assert_close(relu.clip_cpu(x, 0, 6), ref, 0, "clip cpu")


@pytest.mark.parametrize("shape,axis", [((3, 10), 1), ((2, 5, 3, 4), 1), ((2, 3, 4), 2)])
def test_softmax(shape, axis):
    x = rnd(np.random.default_rng(7), *shape, scale=4)
    ref = softmax.softmax_reference(x, axis)
    assert np.allclose(ref.sum(axis=axis), 1, atol=1e-6)
    assert_close(softmax.softmax_cpu(x, axis), ref, 1e-6, "softmax cpu")


def test_concat_eltwise():
    rng = np.random.default_rng(8)
    xs = [rnd(rng, 2, c, 3, 4) for c in (1, 3, 2)]
    assert_close(concat.concat_cpu(xs, 1), concat.concat_reference(xs, 1), 0, "concat")
    ys = [rnd(rng, 2, 3, 4, 5) for _ in range(3)]
    for op, coeffs in [(eltwise.SUM, None), (eltwise.SUM, [0.5, -1.0, 2.0]), (eltwise.PROD, None), (eltwise.MAX, None)]:
        assert_close(eltwise.eltwise_cpu(ys, op, coeffs), eltwise.eltwise_reference(ys, op, coeffs), 1e-6,
                     f"eltwise {op}")
    assert_close(eltwise.eltwise_reference(ys, eltwise.SUM, [0.5, -1.0, 2.0]), 0.5 * ys[0] - ys[1] + 2 * ys[2], 1e-6,
                 "sum")


def test_forced_vector_width_needs_a_cache_of_its_own():
    """MINICAFFE_SIMD_WIDTH (scripts/check_simd_width.py) refuses to run on the shared Numba cache,
    whose kernels are not keyed by the width."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["MINICAFFE_SIMD_WIDTH"] = "8"
    r = subprocess.run([sys.executable, "-c", "import minicaffe.simd"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "NUMBA_CACHE_DIR" in r.stderr
