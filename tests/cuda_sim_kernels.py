"""CUDA kernels vs the NumPy references, run by tests/test_cuda_sim.py in a subprocess with
NUMBA_ENABLE_CUDASIM=1 (set before numba is imported). Tiny shapes: the simulator interprets
every GPU thread in Python. Run directly with a real GPU too: ``python -m pytest tests/cuda_sim_kernels.py``.
"""
import numpy as np
import pytest
from conftest import assert_close
from kernel_cases import CONV, LRN, POOL, rnd

from minicaffe.backend import to_device
from minicaffe.layers import concat, eltwise, relu, softmax
from minicaffe.layers import convolution as C
from minicaffe.layers import inner_product as ip
from minicaffe.layers import lrn as L
from minicaffe.layers import pooling as P
from minicaffe.layers.pooling import pool_out_size

D = to_device


@pytest.mark.parametrize("case", CONV, ids=[c[0] for c in CONV])
def test_conv_cuda(case):
    name, xs, ws, stride, pad, dil, group, bias = case
    rng = np.random.default_rng(0)
    x, w = rnd(rng, *xs), rnd(rng, *ws)
    b = rnd(rng, ws[0]) if bias else None
    ref = C.convolution_reference(x, w, b, stride, pad, dil, group)
    out = C.convolution_cuda(D(x), D(w), None if b is None else D(b), stride, pad, dil, group).copy_to_host()
    assert_close(out, ref, 1e-5, f"conv cuda {name}")


@pytest.mark.parametrize("case", POOL, ids=[c[0] for c in POOL])
def test_pool_cuda(case):
    name, xs, method, k, s, p, ceil = case
    x = rnd(np.random.default_rng(2), *xs)
    out_hw = (pool_out_size(xs[2], k[0], s[0], p[0], ceil), pool_out_size(xs[3], k[1], s[1], p[1], ceil))
    ref = P.pooling_reference(x, method, k, s, p, out_hw)
    assert_close(P.pooling_cuda(D(x), method, k, s, p, out_hw).copy_to_host(), ref, 1e-6, f"pool cuda {name}")


@pytest.mark.parametrize("case", LRN, ids=[c[0] for c in LRN])
def test_lrn_cuda(case):
    name, xs, size, alpha, beta, k, region = case
    x = rnd(np.random.default_rng(3), *xs, scale=3.0)
    ref = L.lrn_reference(x, size, alpha, beta, k, region)
    assert_close(L.lrn_cuda(D(x), size, alpha, beta, k, region).copy_to_host(), ref, 1e-5, f"lrn cuda {name}")


@pytest.mark.parametrize("n", [1, 3])
def test_inner_product_cuda(n):
    rng = np.random.default_rng(4)
    x, w, b = rnd(rng, n, 37), rnd(rng, 11, 37), rnd(rng, 11)
    ref = ip.inner_product_reference(x, w, b)
    assert_close(ip.inner_product_cuda(D(x), D(w), D(b)).copy_to_host(), ref, 1e-5, "ip cuda")


def test_elementwise_cuda():
    rng = np.random.default_rng(5)
    x = rnd(rng, 2, 3, 4, 5, scale=5)
    assert_close(relu.relu_cuda(D(x), 0.1).copy_to_host(), relu.relu_reference(x, 0.1), 0, "relu cuda")
    assert_close(relu.clip_cuda(D(x), 0, 6).copy_to_host(), relu.clip_reference(x, 0, 6), 0, "clip cuda")
    assert_close(softmax.softmax_cuda(D(x), 1).copy_to_host(), softmax.softmax_reference(x, 1), 1e-6, "softmax cuda")
    xs = [rnd(rng, 2, c, 3, 2) for c in (1, 3)]
    assert_close(concat.concat_cuda([D(a) for a in xs], 1).copy_to_host(), concat.concat_reference(xs, 1), 0, "concat")
    ys = [rnd(rng, 2, 3, 2, 2) for _ in range(3)]
    for op, co in [(eltwise.SUM, [0.5, -1.0, 2.0]), (eltwise.PROD, None), (eltwise.MAX, None)]:
        assert_close(eltwise.eltwise_cuda([D(a) for a in ys], op, co).copy_to_host(),
                     eltwise.eltwise_reference(ys, op, co), 1e-6, f"eltwise cuda {op}")


def test_tiny_net_cuda_backend():
    """Whole net on the cuda backend (blobs stay on the device between layers) vs numpy."""
    import minicaffe
    proto = """
    input: "data" input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
            convolution_param { num_output: 4 kernel_size: 3 group: 1 } }
    layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
    layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    layer { name: "n1" type: "LRN" bottom: "p1" top: "n1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
    layer { name: "fc" type: "InnerProduct" bottom: "n1" top: "fc" inner_product_param { num_output: 5 } }
    layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
    """
    x = rnd(np.random.default_rng(9), 2, 3, 9, 9)
    ref = minicaffe.Net(proto, None, backend="numpy").forward(x)
    out = minicaffe.Net(proto, None, backend="cuda").forward(x, keep_pre_activation=True)
    for k in ref:
        assert_close(out[k], ref[k], 1e-5, f"tiny net cuda blob {k}")
    assert (out["c1.pre"] < 0).any() and (out["c1"] >= 0).all()
