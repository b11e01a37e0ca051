"""The whole-forward program's kernels for NCHW-born nets (CaffeNet's), one layer at a time on odd
shapes, against the NumPy reference: Winograd with channels-last output (tails of tiles, groups,
5x5 in pieces, padding 0-2, chunks of images), the direct convolution through the taps GEMM, and
inner products over more than ROWS_MAX_BATCH inputs (partial panels of inputs and chunks of K,
with and without bias, fused ReLU)."""
import numpy as np
import pytest
from conftest import assert_close

import minicaffe
from minicaffe import program
from minicaffe.layers.inner_product import ROWS_MAX_BATCH


def _net(layer, shape, relu):
    act = 'layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }' if relu else ""
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'input: "data" input_shape {{ {dims} }}\n{layer}\n{act}\n'


def _check(proto, shape, what):
    x = np.random.default_rng(len(proto)).standard_normal(shape).astype(np.float32)
    net = minicaffe.Net(proto, None, seed=3)
    ref = minicaffe.Net(proto, net.params, backend="numpy").forward(x)["y"]
    net.freeze()
    got = net.forward(x, fetch=["y"])
    progs = [p for p in net._programs.values() if p is not None]
    assert progs and progs[0].rest == len(net._steps_cache[1]), f"{what}: not one program"
    for p in progs:
        p.prog.scratch[:] = np.nan
    assert_close(net.forward(x, fetch=["y"])["y"], ref, 2e-5, what)
    assert_close(got["y"], ref, 2e-5, what)
    return progs[0]


# (batch, channels, H, W, outputs, kernel, pad, group)
WINO = [(1, 16, 13, 13, 32, 3, 1, 1), (3, 32, 9, 11, 48, 3, 0, 2), (2, 32, 10, 7, 40, 5, 2, 2),
        (1, 20, 27, 27, 24, 5, 2, 1), (4, 16, 6, 9, 16, 3, 1, 1)]


@pytest.mark.parametrize("case", WINO, ids=[str(c) for c in WINO])
@pytest.mark.parametrize("chunks", [False, True])
def test_winograd_channels_last(monkeypatch, case, chunks):
    N, C, H, W, M, k, pad, g = case
    if chunks:
        monkeypatch.setattr(program, "WINOGRAD_BUDGET", 1)
    layer = (f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "y" convolution_param {{ '
             f'num_output: {M} kernel_size: {k} pad: {pad} group: {g} }} }}')
    p = _check(_net(layer, (N, C, H, W), relu=N % 2 == 1), (N, C, H, W), f"winograd {case} chunks {chunks}")
    assert p.kernel_layers.count("c") == 4 * (N if chunks else 1), p.kernel_layers


# (batch, channels, H, W, outputs, kernel, stride, pad)
DIRECT = [(1, 3, 23, 21, 20, 7, 2, 0), (2, 3, 27, 27, 32, 11, 4, 0), (3, 5, 12, 9, 7, 3, 2, 1)]


@pytest.mark.parametrize("case", DIRECT, ids=[str(c) for c in DIRECT])
def test_direct_convolution_channels_last(case):
    N, C, H, W, M, k, s, pad = case
    layer = (f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "y" convolution_param {{ '
             f'num_output: {M} kernel_size: {k} stride: {s} pad: {pad} }} }}')
    _check(_net(layer, (N, C, H, W), relu=True), (N, C, H, W), f"direct {case}")


@pytest.mark.parametrize("N,K,M,bias,relu", [(ROWS_MAX_BATCH + 1, 1000, 37, True, True),
                                             (40, 1100, 70, False, False), (3, 700, 45, True, False)])
def test_inner_product_in_place(monkeypatch, N, K, M, bias, relu):
    """Weights read in place: the rows kernel up to ROWS_MAX_BATCH inputs, past it the products
    of weight rows with packed inputs, K in chunks (the last partial), inputs in panels of 32 (the
    last partial)."""
    monkeypatch.setattr(program, "FC_ROWS_FROM", 0)
    monkeypatch.setattr(program, "K_CHUNK", 512)
    layer = (f'layer {{ name: "f" type: "InnerProduct" bottom: "data" top: "y" inner_product_param {{ '
             f'num_output: {M} bias_term: {str(bias).lower()} }} }}')
    p = _check(_net(layer, (N, K), relu), (N, K), f"inner product {N}x{K} -> {M}")
    want = 2 + -(-K // 512) if N > ROWS_MAX_BATCH else 1
    assert p.kernel_layers.count("f") == want, p.kernel_layers
