"""Every CPU convolution variant against the NumPy reference, through one signature.

Each variant of ``minicaffe.layers.convolution`` takes ``(x, w, b, stride, pad, dilation, group)``
(or the documented subset); the table says which shapes each one supports. Odd sizes, tails,
groups, asymmetric padding, batch 1 and > 1; float64 reference, explicit tolerance.
"""
import numpy as np
import pytest

from minicaffe.layers import convolution as C


def _assert_close(got, want, rtol, what):
    err = np.abs(got.astype(np.float64) - want)
    rel = err.max() / max(np.abs(want).max(), 1e-30)
    where = np.unravel_index(err.argmax(), err.shape)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert rel <= rtol, f"{what}: max abs err {err.max():.3e}, rel {rel:.3e} at {where} (tolerance {rtol})"


# (id, x shape, w shape, stride, pad (t, b, l, r), dilation, group)
CASES = [
    ("3x3_b1_odd", (1, 16, 13, 11), (24, 16, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("3x3_b5_group2_asym", (5, 32, 9, 10), (32, 16, 3, 3), (1, 1), (1, 0, 2, 1), (1, 1), 2),
    ("5x5_b3_group2", (3, 32, 15, 15), (48, 16, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 2),
    ("5x5_b1_nopad", (1, 16, 9, 8), (16, 16, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("1x1_b2", (2, 24, 7, 5), (40, 24, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("11x11_s4_b2", (2, 3, 35, 35), (16, 3, 11, 11), (4, 4), (0, 0, 0, 0), (1, 1), 1),
    ("3x3_s2_group2", (3, 4, 9, 10), (6, 2, 3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 2),
    ("3x2_s2x1_dil2", (2, 4, 11, 9), (6, 4, 3, 2), (2, 1), (1, 1, 0, 1), (2, 2), 1),
    ("37ch_b2_tails", (2, 5, 8, 9), (37, 5, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("narrow_plane_s1", (1, 8, 3, 2), (20, 8, 2, 2), (1, 1), (0, 1, 1, 0), (1, 1), 1),
    ("dw_3x3_b2", (2, 8, 9, 7), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8),
    ("dw_5x5_s2_mult2", (1, 6, 12, 11), (12, 1, 5, 5), (2, 2), (1, 2, 2, 1), (1, 1), 6),
    ("dw_3x3_s2_same_b3", (3, 5, 13, 14), (5, 1, 3, 3), (2, 2), (0, 1, 0, 1), (1, 1), 5),
    ("dw_3x3_s3_k_below_stride", (2, 4, 11, 10), (4, 1, 2, 2), (3, 3), (1, 1, 1, 1), (1, 1), 4),
    ("dw_3x3_dil2", (1, 3, 9, 9), (3, 1, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 3),
    ("1x1_b1_37ch_tails", (1, 19, 3, 5), (37, 19, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("1x1_b3_two_panels", (3, 7, 2, 3), (70, 7, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("dw_5x5_s2_b2_wide", (2, 40, 9, 12), (40, 1, 5, 5), (2, 2), (2, 2, 1, 2), (1, 1), 40),
    ("dw_3x3_s1_b1_nopad", (1, 17, 4, 6), (17, 1, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 17),
    ("dw_5x5_s1_b1_48ch", (1, 48, 7, 7), (48, 1, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 48),
    ("dw_5x5_s1_narrow_b2", (2, 20, 6, 3), (20, 1, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 20),
    ("dw_7x3_s1_tails", (1, 19, 8, 9), (19, 1, 7, 3), (1, 1), (3, 3, 1, 1), (1, 1), 19),
    # output rows a multiple of 7 wide: the 7-pixel tiles
    ("dw_3x3_s1_w14_tails_b2", (2, 37, 5, 14), (37, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 37),
    ("dw_3x3_s2_w14", (1, 32, 7, 28), (32, 1, 3, 3), (2, 2), (0, 1, 0, 1), (1, 1), 32),
    ("dw_5x5_s2_w7_b2", (2, 24, 9, 14), (24, 1, 5, 5), (2, 2), (1, 2, 1, 2), (1, 1), 24),
    ("stem_3x3_s2_rgb_b2", (2, 3, 15, 13), (40, 3, 3, 3), (2, 2), (0, 1, 0, 1), (1, 1), 1),
]


def _supports(variant, xs, ws, stride, pad, dil, group):
    square_s1 = ws[2] == ws[3] and tuple(stride) == (1, 1) and tuple(dil) == (1, 1)
    depthwise = group == xs[1] and ws[1] == 1
    return {
        "cpu": True,
        "gather": not depthwise,
        "wide": tuple(stride) == (1, 1) and not depthwise,
        "phase": stride[0] == stride[1] and tuple(dil) == (1, 1) and not depthwise,
        "winograd": square_s1 and not depthwise,
        "1x1": ws[2:] == (1, 1) and tuple(stride) == (1, 1) and tuple(pad) == (0, 0, 0, 0) and group == 1,
        "depthwise": depthwise,
        "direct": C.direct_applies(xs, np.empty(ws), stride, pad, dil, group),
        "direct-cl": C.direct_applies(xs, np.empty(ws), stride, pad, dil, group),
        "direct-from-cl": C.direct_applies(xs, np.empty(ws), stride, pad, dil, group),
        "1x1-cl": C.conv1x1_applies(xs, ws, stride, pad, dil, group),
        "1x1-cl-from-nchw": C.conv1x1_applies(xs, ws, stride, pad, dil, group),
        "depthwise-cl": C.depthwise_nhwc_applies(xs, ws, dil, group),
        "depthwise-cl-from-nchw": C.depthwise_nhwc_applies(xs, ws, dil, group),
        "cpu-cl": True,
        "taps-cl": C.taps_applies(xs, ws, group) and C.direct_applies(xs, np.empty(ws), stride, pad, dil, group),
    }[variant]


def _cl(x):
    """x: (N, C, H, W) -> the same values with channels-last memory (an NHWC array seen as NCHW)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _checked_cl(y):
    from minicaffe.layers.base import is_channels_last
    assert is_channels_last(y) or y.shape[1] == 1, f"output not channels last: strides {y.strides}"
    return y


VARIANTS = {
    "cpu": C.convolution_cpu,
    "gather": C.convolution_gather_cpu,
    "wide": lambda x, w, b, s, p, d, g: C.convolution_wide_cpu(x, w, b, p, d, g),
    "phase": lambda x, w, b, s, p, d, g: C.convolution_phase_cpu(x, w, b, s, p, g),
    "winograd": lambda x, w, b, s, p, d, g: C.convolution_winograd_cpu(x, w, b, p, g),
    "1x1": lambda x, w, b, s, p, d, g: C.convolution_1x1_cpu(x, w, b),
    "depthwise": C.convolution_depthwise_cpu,
    "direct": C.convolution_direct_cpu,
    # channels-last outputs (and inputs): the kernels of minicaffe.layers.convolution.nhwc
    "direct-cl": lambda x, w, b, s, p, d, g, **k: _checked_cl(C.convolution_direct_cpu(x, w, b, s, p, d, g, **k,
                                                                                       channels_last=True)),
    "direct-from-cl": lambda x, w, b, s, p, d, g, **k: C.convolution_direct_cpu(_cl(x), w, b, s, p, d, g, **k),
    "1x1-cl": lambda x, w, b, s, p, d, g, **k: _checked_cl(C.convolution_1x1_nhwc_cpu(_cl(x), w, b, **k)),
    "1x1-cl-from-nchw": lambda x, w, b, s, p, d, g, **k: _checked_cl(C.convolution_1x1_nhwc_cpu(x, w, b, **k)),
    "depthwise-cl": lambda x, w, b, s, p, d, g, **k: _checked_cl(C.convolution_depthwise_nhwc_cpu(_cl(x), w, b, s, p,
                                                                                                 **k)),
    "depthwise-cl-from-nchw": lambda x, w, b, s, p, d, g, **k: _checked_cl(C.convolution_depthwise_nhwc_cpu(x, w, b, s,
                                                                                                           p, **k)),
    "cpu-cl": lambda x, w, b, s, p, d, g, **k: C.convolution_cpu(_cl(x), w, b, s, p, d, g, **k),
    "taps-cl": lambda x, w, b, s, p, d, g, **k: _checked_cl(C.convolution_taps_nhwc_cpu(x, w, b, s, p, d, **k)),
}
_CL_VARIANTS = [v for v in VARIANTS if v.endswith(("-cl", "-from-nchw"))]


PAIRS = [(v, c) for c in CASES for v in VARIANTS if _supports(v, *c[1:])]

#: modules whose kernels run on the calling thread below a size: both ways are tested
_SIZE_SWITCHED = [("minicaffe.layers.convolution.depthwise", "SERIAL_BELOW"),
                  ("minicaffe.layers.convolution.im2col", "SERIAL_BELOW"),
                  ("minicaffe.layers.convolution.direct", "PARALLEL_PAD_FROM"),
                  ("minicaffe.layers.convolution.nhwc", "PARALLEL_MACS"),
                  ("minicaffe.layers.convolution.cache", "PARALLEL_COMPARE_FROM"),
                  ("minicaffe.layers.pooling", "SERIAL_BELOW"), ("minicaffe.layers.softmax", "SERIAL_BELOW"),
                  ("minicaffe.layers.lrn", "SERIAL_BELOW"), ("minicaffe.layers.eltwise", "SERIAL_BELOW")]


@pytest.fixture(params=["serial", "parallel", "serial-planes", "parallel-nhwc"])
def threads(request, monkeypatch):
    """Small shapes run the serial twins by default; "parallel" forces the prange kernels. Depthwise
    layers also switch between channel-vector (NHWC) and per-plane kernels by size: "serial" and
    "parallel-nhwc" take the first, "parallel" and "serial-planes" the second."""
    import importlib
    serial = request.param.startswith("serial")
    for mod, name in _SIZE_SWITCHED:
        monkeypatch.setattr(importlib.import_module(mod), name, 1 << 40 if serial else 0)
    nhwc = request.param in ("serial", "parallel-nhwc")
    monkeypatch.setattr(importlib.import_module("minicaffe.layers.convolution.depthwise"), "NHWC_BELOW",
                        1 << 40 if nhwc else 0)
    return request.param


#: the thread modes that differ for a variant: the per-plane / channel-vector switch of the NCHW
#: depthwise kernels matters only where those kernels run
_MODES = {v: (["serial", "parallel", "serial-planes", "parallel-nhwc"] if v in ("cpu", "depthwise", "cpu-cl")
              else ["serial", "parallel"]) for v in VARIANTS}
_MODE_PAIRS = [(v, c, t) for v, c in PAIRS for t in _MODES[v]]


@pytest.mark.parametrize("variant,case,threads", _MODE_PAIRS, ids=[f"{t}-{v}-{c[0]}" for v, c, t in _MODE_PAIRS],
                         indirect=["threads"])
def test_variant_vs_reference(variant, case, threads):
    name, xs, ws, stride, pad, dil, group = case
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(xs) * 10).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    for b in (rng.standard_normal(ws[0]).astype(np.float32), None):
        ref = C.convolution_reference(x.astype(np.float64), w.astype(np.float64),
                                      None if b is None else b.astype(np.float64), stride, pad, dil, group)
        got = VARIANTS[variant](x, w, b, stride, pad, dil, group)
        _assert_close(got, ref, 2e-5, f"{variant} {name} bias={b is not None}")


FUSING = {
    "cpu": lambda x, w, b, s, p, d, g: C.convolution_cpu(x, w, b, s, p, d, g, relu=True),
    "gather": lambda x, w, b, s, p, d, g: C.convolution_gather_cpu(x, w, b, s, p, d, g, relu=True),
    "wide": lambda x, w, b, s, p, d, g: C.convolution_wide_cpu(x, w, b, p, d, g, relu=True),
    "phase": lambda x, w, b, s, p, d, g: C.convolution_phase_cpu(x, w, b, s, p, g, relu=True),
    "winograd": lambda x, w, b, s, p, d, g: C.convolution_winograd_cpu(x, w, b, p, g, relu=True),
    "1x1": lambda x, w, b, s, p, d, g: C.convolution_1x1_cpu(x, w, b, relu=True),
    "depthwise": lambda x, w, b, s, p, d, g: C.convolution_depthwise_cpu(x, w, b, s, p, d, g, relu=True),
    "direct": lambda x, w, b, s, p, d, g: C.convolution_direct_cpu(x, w, b, s, p, d, g, relu=True),
    **{v: (lambda f: lambda x, w, b, s, p, d, g: f(x, w, b, s, p, d, g, relu=True))(VARIANTS[v]) for v in _CL_VARIANTS},
}


FUSING_CAP = {
    "cpu": lambda x, w, b, s, p, d, g, c: C.convolution_cpu(x, w, b, s, p, d, g, relu=True, relu_cap=c),
    "gather": lambda x, w, b, s, p, d, g, c: C.convolution_gather_cpu(x, w, b, s, p, d, g, relu=True, relu_cap=c),
    "wide": lambda x, w, b, s, p, d, g, c: C.convolution_wide_cpu(x, w, b, p, d, g, relu=True, relu_cap=c),
    "phase": lambda x, w, b, s, p, d, g, c: C.convolution_phase_cpu(x, w, b, s, p, g, relu=True, relu_cap=c),
    "winograd": lambda x, w, b, s, p, d, g, c: C.convolution_winograd_cpu(x, w, b, p, g, relu=True, relu_cap=c),
    "1x1": lambda x, w, b, s, p, d, g, c: C.convolution_1x1_cpu(x, w, b, relu=True, relu_cap=c),
    "depthwise": lambda x, w, b, s, p, d, g, c: C.convolution_depthwise_cpu(x, w, b, s, p, d, g, relu=True,
                                                                            relu_cap=c),
    "direct": lambda x, w, b, s, p, d, g, c: C.convolution_direct_cpu(x, w, b, s, p, d, g, relu=True, relu_cap=c),
    **{v: (lambda f: lambda x, w, b, s, p, d, g, c: f(x, w, b, s, p, d, g, relu=True, relu_cap=c))(VARIANTS[v])
       for v in _CL_VARIANTS},
}


@pytest.mark.parametrize("variant,case", PAIRS, ids=[f"{v}-{c[0]}" for v, c in PAIRS])
def test_variant_fused_relu(variant, case):
    """relu=True equals max(0, conv) of the reference (the fused in-place ReLU), and with relu_cap
    min(max(0, conv), cap) (a fused ReLU6), with and without bias."""
    name, xs, ws, stride, pad, dil, group = case
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(xs) * 10).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    for b in (rng.standard_normal(ws[0]).astype(np.float32), None):
        ref = C.convolution_reference(x.astype(np.float64), w.astype(np.float64),
                                      None if b is None else b.astype(np.float64), stride, pad, dil, group)
        got = FUSING[variant](x, w, b, stride, pad, dil, group)
        assert (got >= 0).all() and (got == 0).any(), f"{variant} {name}: not rectified"
        _assert_close(got, np.maximum(ref, 0), 2e-5, f"{variant}+relu {name} bias={b is not None}")
        # ReLU6 / Clip(0, cap): the cap sits inside the outputs' range
        cap = float(np.percentile(ref, 80))
        got = FUSING_CAP[variant](x, w, b, stride, pad, dil, group, cap)
        assert got.max() <= np.float32(cap) and (got == np.float32(cap)).any(), f"{variant} {name}: not capped"
        _assert_close(got, np.clip(ref, 0, cap), 2e-5, f"{variant}+relu6 {name} bias={b is not None}")


@pytest.mark.parametrize("variant", ["direct", "winograd", "1x1-cl", "depthwise-cl"])
def test_cached_weight_transforms_follow_in_place_edits(variant):
    """Packed panels / Winograd filters are cached per weight array; an in-place edit of the
    weights (training, ``net.params[...][0][...] = ...``) must give the new result, never the old."""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((4, 16, 9, 9)) * 10).astype(np.float32)
    k, pad, group, cg = {"1x1-cl": (1, 0, 1, 16), "depthwise-cl": (3, 1, 16, 1)}.get(variant, (3, 1, 1, 16))
    w = rng.standard_normal((24 if group == 1 else 16, cg, k, k)).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    f = VARIANTS[variant]
    for edit in (lambda a: None, lambda a: a.__setitem__((3, 0, 0, 0), a[3, 0, 0, 0] + 1.0),
                 lambda a: a.__imul__(np.float32(-0.5))):
        edit(w)
        ref = C.convolution_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                      (1, 1), (pad,) * 4, (1, 1), group)
        _assert_close(f(x, w, b, (1, 1), (pad,) * 4, (1, 1), group), ref, 2e-5, f"{variant} after an edit")


def test_frozen_weights_skip_the_check_and_unfreezing_follows_edits():
    """A frozen net's weights are read-only (an edit raises, the cached panels are trusted);
    freeze(False) makes them writeable and an edit then changes the result."""
    from minicaffe import Net
    proto = """input: "data" input_shape { dim: 2 dim: 8 dim: 5 dim: 5 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 12 kernel_size: 1 } }"""
    net = Net(proto, None, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 8, 5, 5)).astype(np.float32)
    before = net.forward(x)["c"].copy()
    net.freeze()
    assert net.frozen
    with pytest.raises(ValueError, match="read-only"):
        net.params["c"][0][0, 0, 0, 0] = 5.0
    np.testing.assert_array_equal(net.forward(x)["c"], before)
    net.freeze(False)
    net.params["c"][0][0, 0, 0, 0] += 5.0
    after = net.forward(x)["c"]
    np.testing.assert_allclose(after[:, 0] - before[:, 0], 5.0 * x[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(after[:, 1:], before[:, 1:])


def test_small_layers_serial_and_parallel_agree(threads):
    """pooling, LRN, softmax and eltwise: the serial twins and the prange kernels against the
    NumPy references (the ``threads`` fixture picks the path)."""
    from minicaffe.layers import eltwise, lrn, pooling, softmax
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((2, 7, 11, 9)) * 3).astype(np.float32)
    for args in ((0, (3, 3), (2, 2), (0, 0), (5, 4)), (1, (3, 2), (2, 1), (1, 1), (6, 10))):
        _assert_close(pooling.pooling_cpu(x, *args), pooling.pooling_reference(x.astype(np.float64), *args), 1e-6,
                      f"pooling {args} {threads}")
    _assert_close(lrn.lrn_cpu(x, 5, 1e-2, 0.75, 1.0), lrn.lrn_reference(x.astype(np.float64), 5, 1e-2, 0.75, 1.0),
                  1e-5, f"lrn {threads}")
    z = rng.standard_normal((3, 10, 4)).astype(np.float32)
    _assert_close(softmax.softmax_cpu(z), softmax.softmax_reference(z.astype(np.float64)), 1e-6, f"softmax {threads}")
    _assert_close(eltwise.eltwise_cpu([x, 2 * x], eltwise.SUM, [1.0, -0.5]),
                  eltwise.eltwise_reference([x.astype(np.float64), 2 * x.astype(np.float64)], eltwise.SUM, [1.0, -0.5]),
                  1e-6, f"eltwise {threads}")


def _spy_on_chains(monkeypatch):
    """-> a list that gets an entry for every run of a prepared chain whose kernels include the
    fused one (nhwc "block" with a 1x1 stage: has_expand or has_project; a depthwise layer alone
    runs without it). Runners are made afresh here: the test weights are not frozen."""
    from minicaffe.layers.convolution import nhwc
    ran, make = [], nhwc._runner

    def spy(in_shape, out_shape, *ops):
        run = make(in_shape, out_shape, *ops)
        fused = any(kind == "block" and (args[1][0] or args[1][14]) for kind, args in ops)

        def counted(x):
            if fused:
                ran.append(1)
            return run(x)
        counted.ops = run.ops
        return counted
    monkeypatch.setattr(nhwc, "_runner", spy)
    return ran


# (id, x shape, expanded channels, depthwise kernel, stride, pad (t, b, l, r))
EXPAND_CASES = [
    ("b1_s2_k3", (1, 16, 23, 21), 48, 3, 2, (1, 1, 1, 1)),
    ("b2_s1_k5_tails", (2, 5, 13, 9), 37, 5, 1, (2, 2, 2, 2)),
    ("b3_s2_k5_same", (3, 8, 12, 14), 20, 5, 2, (1, 2, 1, 2)),
    ("b1_s1_k3_nopad", (1, 24, 8, 7), 64, 3, 1, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("budget", [None, 1], ids=["one-band", "row-bands"])
@pytest.mark.parametrize("case", EXPAND_CASES, ids=[c[0] for c in EXPAND_CASES])
def test_expansion_fused_with_depthwise(case, budget, threads, monkeypatch):
    """The 1x1 expansion computed inside the depthwise kernel equals the two reference layers one
    after the other (with ReLU6 on both, and without activations), whether the expanded rows fit
    one buffer or are produced band by band (a tiny buffer: every band reuses the rows the
    previous one expanded). A spy checks the fused kernel ran."""
    from minicaffe.layers.convolution import nhwc
    if budget is not None:
        monkeypatch.setattr(nhwc, "EXPAND_BUFFER_BYTES", budget)
    # fused at these small sizes too (the wrapper would run the two kernels one after the other)
    monkeypatch.setattr(nhwc, "FUSE_EXPANDED_FROM", 0)
    monkeypatch.setattr(nhwc, "FUSE_HALO", 1e9)
    ran = _spy_on_chains(monkeypatch)
    name, xs, ce, k, s, pad = case
    rng = np.random.default_rng(15)
    x = (rng.standard_normal(xs) * 3).astype(np.float32)
    we = (rng.standard_normal((ce, xs[1], 1, 1)) * 0.5).astype(np.float32)
    be = rng.standard_normal(ce).astype(np.float32)
    wd = (rng.standard_normal((ce, 1, k, k)) * 0.5).astype(np.float32)
    bd = rng.standard_normal(ce).astype(np.float32)
    for act in (False, True):
        e = C.convolution_reference(x.astype(np.float64), we.astype(np.float64), be.astype(np.float64))
        e = np.clip(e, 0, 6) if act else e
        ref = C.convolution_reference(e, wd.astype(np.float64), bd.astype(np.float64), (s, s), pad, (1, 1), ce)
        ref = np.clip(ref, 0, 6) if act else ref
        for xin in (_cl(x), x):
            ran.clear()
            got = _checked_cl(nhwc.convolution_expand_depthwise_nhwc_cpu(xin, we, be, wd, bd, (s, s), pad, act,
                                                                         6.0 if act else None, act,
                                                                         6.0 if act else None))
            assert ran, "the fused kernel did not run"
            _assert_close(got, ref, 2e-5, f"expand+depthwise {name} act={act} {threads}")


# (id, x shape, expansion channels or None, depthwise kernel, stride, pad, projection channels, residual)
BLOCK_CASES = [
    ("expand_dw_project_residual", (2, 8, 11, 9), 24, 3, 1, (1, 1, 1, 1), 8, True),
    ("expand_dw_project_s2", (1, 16, 17, 20), 40, 5, 2, (2, 2, 2, 2), 19, False),
    ("dw_project_tails", (3, 21, 7, 8), None, 3, 1, (1, 1, 1, 1), 37, False),
    ("dw_project_residual_b1", (1, 32, 9, 12), None, 3, 1, (1, 1, 1, 1), 32, True),
    ("expand_dw_project_nopad", (2, 5, 10, 10), 33, 3, 1, (0, 0, 0, 0), 70, False),
]


def _conv_ref(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), group=1):
    return C.convolution_reference(x, w.astype(np.float64), b.astype(np.float64), stride, pad, (1, 1), group)


@pytest.mark.parametrize("budget", [None, 1], ids=["one-band", "row-bands"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_inverted_residual_block_kernel(case, budget, threads, monkeypatch):
    """[expansion + ReLU6] -> depthwise + ReLU6 -> projection [+ input] in one kernel equals the
    reference layers one after the other, in one band or many (the kernel forced and spied on),
    and so does the same function's unfused route."""
    from minicaffe.layers.convolution import nhwc
    if budget is not None:
        monkeypatch.setattr(nhwc, "EXPAND_BUFFER_BYTES", budget)
    name, xs, ce, k, s, pad, cout, residual = case
    rng = np.random.default_rng(16)
    x = (rng.standard_normal(xs) * 3).astype(np.float32)
    cin = xs[1]
    ce_ = ce or cin
    we = (rng.standard_normal((ce_, cin, 1, 1)) * 0.5).astype(np.float32) if ce else None
    be = rng.standard_normal(ce_).astype(np.float32) if ce else None
    wd = (rng.standard_normal((ce_, 1, k, k)) * 0.5).astype(np.float32)
    bd = rng.standard_normal(ce_).astype(np.float32)
    wp = (rng.standard_normal((cout, ce_, 1, 1)) * 0.3).astype(np.float32)
    bp = rng.standard_normal(cout).astype(np.float32)
    h = x.astype(np.float64)
    if ce:
        h = np.clip(_conv_ref(h, we, be), 0, 6)
    h = np.clip(_conv_ref(h, wd, bd, (s, s), pad, ce_), 0, 6)
    ref = _conv_ref(h, wp, bp) + (x.astype(np.float64) if residual else 0)
    ran = _spy_on_chains(monkeypatch)
    monkeypatch.setattr(nhwc, "FUSE_HALO", 1e9)
    for fuse in (True, False):
        monkeypatch.setattr(nhwc, "FUSE_EXPANDED_FROM", 0 if fuse else 1 << 60)
        ran.clear()
        got = _checked_cl(nhwc.convolution_block_nhwc_cpu(
            _cl(x), None if ce is None else (we, be, True, 6.0), (wd, bd, (s, s), pad, True, 6.0), (wp, bp), residual))
        assert bool(ran) == fuse, f"fused kernel ran: {bool(ran)}, wanted {fuse}"
        _assert_close(got, ref, 2e-5, f"block {name} fused={fuse} {threads}")
