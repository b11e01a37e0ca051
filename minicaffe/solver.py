"""Caffe's SGD solver (momentum, weight decay, per-layer ``lr_mult``/``decay_mult``, learning-rate policies).

One ``step()`` applies, per learnable parameter blob with ``local_lr = lr(iter) * lr_mult`` and
``local_decay = weight_decay * decay_mult`` (sgd_solver.cpp): ``diff += local_decay * W`` (L2,
``regularization_type: "L2"``), ``V = momentum * V + local_lr * diff``, ``W -= V``. Multipliers
come from the prototxt (``param { lr_mult decay_mult }`` per blob; legacy V1 ``blobs_lr`` /
``weight_decay``), default 1, and can be overridden per layer; ``freeze`` sets them to 0.
Policies (solver.prototxt ``lr_policy``): fixed, step (``base_lr * gamma^floor(iter/stepsize)``),
multistep, exp, inv, poly. It reads gradients from ``net.param_diffs`` (filled by
``net.backward``); it does not do the forward/backward itself, L1 regularisation, gradient
clipping, iteration size > 1, or the other Caffe solvers (Nesterov, AdaGrad, Adam...).
"""
from __future__ import annotations

import numpy as np

from .errors import ModelError

POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly")


def learning_rate(it, base_lr, policy="fixed", gamma=0.1, stepsize=1, stepvalues=(), power=1.0, max_iter=1):
    """Caffe's ``GetLearningRate`` for iteration ``it`` (0-based)."""
    if policy == "fixed":
        return base_lr
    if policy == "step":
        return base_lr * gamma ** (it // stepsize)
    if policy == "multistep":
        return base_lr * gamma ** sum(1 for s in stepvalues if it >= s)
    if policy == "exp":
        return base_lr * gamma ** it
    if policy == "inv":
        return base_lr * (1.0 + gamma * it) ** (-power)
    if policy == "poly":
        return base_lr * (1.0 - it / max_iter) ** power
    raise ModelError(f"unknown lr_policy {policy!r} (known: {', '.join(POLICIES)})")


def prototxt_multipliers(layer):
    """-> [(lr_mult, decay_mult)] per parameter blob of ``layer``, from its prototxt (default 1, 1)."""
    n = len(layer.param_shapes)
    out = [(1.0, 1.0)] * n
    specs = layer.lp.getall("param")
    if specs:
        for i, p in enumerate(specs[:n]):
            out[i] = (float(p.get("lr_mult", 1.0)), float(p.get("decay_mult", 1.0)))
    else:  # legacy V1: repeated blobs_lr / weight_decay
        lrs, decs = layer.lp.getall("blobs_lr"), layer.lp.getall("weight_decay")
        for i in range(n):
            out[i] = (float(lrs[i]) if i < len(lrs) else 1.0, float(decs[i]) if i < len(decs) else 1.0)
    return out


class SGDSolver:
    """SGD with momentum in Caffe's form, over ``net.params`` (updated in place).

    lr_mult : {layer name: float or [float per blob]} overriding the prototxt multipliers.
    freeze : layer names whose parameters are not updated (lr_mult 0).
    """

    def __init__(self, net, base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="fixed", gamma=0.1,
                 stepsize=1000, stepvalues=(), power=1.0, max_iter=1000, lr_mult=None, freeze=()):
        if lr_policy not in POLICIES:
            raise ModelError(f"unknown lr_policy {lr_policy!r} (known: {', '.join(POLICIES)})")
        if lr_policy == "step" and stepsize < 1:
            raise ModelError("stepsize must be >= 1")
        self.net = net
        self.base_lr, self.momentum, self.weight_decay = float(base_lr), float(momentum), float(weight_decay)
        self.policy = dict(policy=lr_policy, gamma=gamma, stepsize=stepsize, stepvalues=tuple(stepvalues),
                           power=power, max_iter=max_iter)
        self.iter = 0
        self.mults = {}
        for layer in net.layers:
            if not layer.param_shapes:
                continue
            m = prototxt_multipliers(layer)
            if lr_mult and layer.name in lr_mult:
                v = lr_mult[layer.name]
                v = [v] * len(m) if np.isscalar(v) else list(v)
                m = [(float(a), d) for a, (_, d) in zip(v, m)]
            if layer.name in set(freeze):
                m = [(0.0, d) for _, d in m]
            self.mults[layer.name] = m
        unknown = set(freeze) - {l.name for l in net.layers}
        if unknown:
            raise ModelError(f"freeze names unknown layers {sorted(unknown)}")
        self.history = {k: [np.zeros_like(a) for a in v] for k, v in net.params.items()}

    def lr(self, it=None):
        return learning_rate(self.iter if it is None else it, self.base_lr, **self.policy)

    def trainable(self):
        """Names of layers with at least one blob of non-zero lr_mult."""
        return [k for k, m in self.mults.items() if any(a != 0 for a, _ in m)]

    def step(self):
        """One update from ``net.param_diffs``; layers without a gradient are left alone."""
        rate = self.lr()
        diffs = getattr(self.net, "param_diffs", {})
        for name, mults in self.mults.items():
            if name not in diffs:
                continue
            for k, ((lm, dm), w, g) in enumerate(zip(mults, self.net.params[name], diffs[name])):
                if lm == 0 or g is None:
                    continue
                g = g + np.float32(self.weight_decay * dm) * w if self.weight_decay * dm else g
                v = self.history[name][k]
                v *= np.float32(self.momentum)
                v += np.float32(rate * lm) * g
                w -= v
        self.iter += 1
        return rate
