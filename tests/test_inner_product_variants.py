"""The CPU fully connected kernels against the NumPy reference: BLAS and the weight-streaming
rows kernel, odd sizes (weight-row tails), batch 1 to past the routing threshold, with and without
bias; float64 reference, explicit tolerance."""
import numpy as np
import pytest

from minicaffe.layers import inner_product as ip


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 16, 17])
@pytest.mark.parametrize("m,k", [(8, 33), (64, 1100), (13, 4), (5, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_inner_product_cpu_variants_vs_reference(n, m, k, bias):
    rng = np.random.default_rng(n * 1000 + m)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    ref = ip.inner_product_reference(x.astype(np.float64), w.astype(np.float64),
                                     None if b is None else b.astype(np.float64))
    variants = [("cpu", ip.inner_product_cpu), ("cpu+relu", lambda *a: ip.inner_product_cpu(*a, relu=True)),
                ("cpu+relu6", lambda *a: ip.inner_product_cpu(*a, relu=True, relu_cap=0.5))]
    if m >= ip.ROWS_MR:
        variants += [("rows", ip.inner_product_rows_cpu),
                     ("rows+relu", lambda *a: ip.inner_product_rows_cpu(*a, relu=True)),
                     ("rows+relu6", lambda *a: ip.inner_product_rows_cpu(*a, relu=True, relu_cap=0.5))]
    for name, f in variants:
        got = f(x, w, b)
        want = (np.clip(ref, 0, 0.5) if name.endswith("relu6") else np.maximum(ref, 0) if name.endswith("relu")
                else ref)
        err = np.abs(got - want)
        rel = err.max() / np.abs(ref).max()
        assert got.shape == (n, m) and got.dtype == np.float32
        assert rel <= 1e-5, (f"{name} n={n} m={m} k={k}: max abs {err.max():.3e} rel {rel:.3e} "
                             f"at {np.unravel_index(err.argmax(), err.shape)}")


def test_rows_kernel_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="takes \\(M, K\\)"):
        ip.inner_product_rows_cpu(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32), None, transpose=True)
    with pytest.raises(ValueError, match="M >= "):
        ip.inner_product_rows_cpu(np.zeros((2, 3), np.float32), np.zeros((ip.ROWS_MR - 1, 3), np.float32), None)
