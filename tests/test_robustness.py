"""FGSM / iterated FGSM on a linear softmax classifier, where the answers are known: the input
gradient is W^T (p - onehot) / N, and cross-entropy is convex in x, so one FGSM step of any size
must raise every image's loss."""
import numpy as np
import pytest

from minicaffe import Net
from minicaffe.models import Preprocessing
from minicaffe.robustness import fgsm, input_bounds, loss_and_input_grad

LINEAR = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
SPEC = Preprocessing(resize=(4, 4), crop=4, channel_order="RGB", mean_values=(100.0, 110.0, 120.0),
                     std_values=(50.0, 60.0, 70.0))


@pytest.fixture
def setup():
    net = Net(LINEAR, backend="cpu", seed=0)
    unit, lo, hi = input_bounds(SPEC)
    rng = np.random.default_rng(0)
    px = rng.uniform(0, 255, (4, 4, 4, 3))
    x = ((px - np.array(SPEC.mean_values)) / np.array(SPEC.std_values)).transpose(0, 3, 1, 2).astype(np.float32)
    return net, x, np.array([0, 1, 2, 3]), unit, lo, hi


def test_input_bounds():
    unit, lo, hi = input_bounds(SPEC)
    np.testing.assert_allclose(unit, [1 / 50, 1 / 60, 1 / 70])
    np.testing.assert_allclose(lo, [-2.0, -110 / 60, -120 / 70])
    np.testing.assert_allclose(hi, [155 / 50, 145 / 60, 135 / 70])


def test_input_gradient_of_linear_classifier(setup):
    net, x, y, *_ = setup
    per, pred, g = loss_and_input_grad(net, x, y, "fc")
    W, b = net.params["fc"]
    s = x.reshape(4, -1).astype(np.float64) @ W.T + b
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), y] -= 1
    want = (p @ W / 4).reshape(x.shape)           # mean loss over the batch
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(per, -np.log(np.exp(s - s.max(1, keepdims=True))[np.arange(4), y]
                                            / np.exp(s - s.max(1, keepdims=True)).sum(1)), rtol=1e-5)
    assert np.array_equal(pred, s.argmax(1))
    assert net.phase == "TEST"


@pytest.mark.parametrize("steps", [1, 4])
def test_fgsm_stays_in_ball_and_raises_loss(setup, steps):
    net, x, y, unit, lo, hi = setup
    eps = 8.0
    adv = fgsm(net, x, y, eps, "fc", unit, lo, hi, steps=steps)
    u = unit.reshape(1, -1, 1, 1)
    assert np.all(np.abs(adv - x) <= eps * u + 1e-6), "outside the L-infinity ball"
    assert np.all(adv >= lo.reshape(1, -1, 1, 1) - 1e-6) and np.all(adv <= hi.reshape(1, -1, 1, 1) + 1e-6)
    before = loss_and_input_grad(net, x, y, "fc")[0]
    after = loss_and_input_grad(net, adv, y, "fc")[0]
    assert np.all(after > before), f"loss did not rise: {before} -> {after}"
    if steps == 1:
        g = loss_and_input_grad(net, x, y, "fc")[2]
        inside = (adv > lo.reshape(1, -1, 1, 1) + 1e-6) & (adv < hi.reshape(1, -1, 1, 1) - 1e-6)
        assert np.array_equal(np.sign(adv - x)[inside], np.sign(g)[inside])
    assert np.array_equal(fgsm(net, x, y, 0.0, "fc", unit, lo, hi), x)
