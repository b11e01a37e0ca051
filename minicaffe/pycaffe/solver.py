"""pycaffe's solvers: a solver prototxt in, Caffe's training loop and update rules on pycaffe Nets.

``SGDSolver(solver.prototxt)`` (and Nesterov, AdaGrad, RMSProp, AdaDelta, Adam; ``get_solver``
picks by ``type``) builds the TRAIN net from ``net`` / ``net_param`` / ``train_net`` (with
``train_state``) and one TEST net per ``test_iter`` (from ``test_net`` or the same file, sharing
the train net's parameter blobs as Caffe's ShareTrainedLayersWith does). ``step(n)`` runs Caffe's
Solver::Step: test every ``test_interval`` iterations, clear the parameter diffs, ``iter_size``
forward/backward passes, then ``apply_update``: learning rate by ``lr_policy`` (fixed, step,
multistep, exp, inv, poly, sigmoid), gradient clipping (``clip_gradients``), 1/``iter_size``
normalisation, L2 or L1 weight decay with each blob's ``decay_mult``, the update value of the
solver type (sgd_solver.cpp and its siblings, float32 throughout) with each blob's ``lr_mult``,
``W -= update``. ``snapshot()`` writes ``<prefix>_iter_<n>.caffemodel`` and ``.solverstate``;
``restore(path)`` reads a ``.solverstate`` back (that part needs protobuf). It does not do
multi-GPU (NCCL) training, HDF5 snapshots or the solver callbacks of the C++ API.
"""
from __future__ import annotations

import math
import os
import typing

import numpy as np

from ..errors import ModelError
from ..io.prototxt import Message, parse_file
from ..layers.python_layer import TEST, TRAIN
from .net import Net

_TYPES = {"SGD": "SGDSolver", "Nesterov": "NesterovSolver", "AdaGrad": "AdaGradSolver",
          "RMSProp": "RMSPropSolver", "AdaDelta": "AdaDeltaSolver", "Adam": "AdamSolver"}
_LEGACY_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def _f32(x):
    return np.float32(x)


class _Param:
    """Typed access to the SolverParameter Message with Caffe's defaults."""

    DEFAULTS: typing.ClassVar[dict] = {"test_interval": 0, "test_initialization": True, "display": 0, "average_loss": 1,
                "max_iter": 0, "iter_size": 1, "lr_policy": "fixed", "gamma": 0.0, "power": 0.0,
                "momentum": 0.0, "weight_decay": 0.0, "regularization_type": "L2", "stepsize": 0,
                "clip_gradients": -1.0, "snapshot": 0, "snapshot_prefix": "", "snapshot_after_train": True,
                "random_seed": -1, "delta": 1e-8, "momentum2": 0.999, "rms_decay": 0.99, "base_lr": 0.0}

    def __init__(self, msg):
        self.msg = msg

    def __getattr__(self, k):
        if k == "msg":
            raise AttributeError(k)
        v = self.msg.get(k)
        d = self.DEFAULTS.get(k)
        if v is None:
            return d
        if isinstance(d, bool):
            return str(v).lower() in ("true", "1")
        if isinstance(d, float):
            return float(v)
        if isinstance(d, int):
            return int(v)
        return str(v)


def _state(msg, phase):
    """A NetState Message -> (phase, level, stages)."""
    if msg is None:
        return phase, 0, []
    return phase, int(msg.get("level", 0)), [str(s) for s in msg.getall("stage")]


class Solver:
    """Caffe's Solver with the SGD update; subclasses change :meth:`_update_value`."""

    type = "SGD"

    def __init__(self, filename):
        self._file = os.fspath(filename)
        msg = parse_file(self._file) if os.path.exists(self._file) else None
        if msg is None:
            raise FileNotFoundError(f"{self._file}: no such solver prototxt")
        self.param_msg = msg
        self.p = _Param(msg)
        if self.p.random_seed >= 0:
            from ._mode import set_random_seed
            set_random_seed(self.p.random_seed)
        self.iter = 0
        self.current_step = 0
        self.net = self._train_net()
        self.test_nets = self._test_nets()
        for tn in self.test_nets:
            tn.share_with(self.net)
        self._learnable = [(s, i, p) for s in self.net._slots for i, p in enumerate(s.params)]
        self.history = [np.zeros(p.shape, np.float32) for _, _, p in self._learnable]
        self._history2 = [np.zeros(p.shape, np.float32) for _, _, p in self._learnable]
        self.smoothed_loss = 0.0
        self._losses = []
        self.test_scores = []

    # ------------------------------------------------------------------ nets
    def _net_source(self, field_file, field_param):
        f, m = self.param_msg.get(field_file), self.param_msg.get(field_param)
        return m if isinstance(m, Message) else (str(f) if f is not None else None)

    def _train_net(self):
        src = self._net_source("train_net", "train_net_param") or self._net_source("net", "net_param")
        if src is None:
            raise ModelError(f"{self._file}: the solver names no net (net, net_param, train_net or train_net_param)")
        phase, level, stages = _state(self.param_msg.get("train_state"), TRAIN)
        return Net(src, phase, level=level, stages=stages)

    def _test_nets(self):
        msg = self.param_msg
        sources = [str(f) for f in msg.getall("test_net")] + list(msg.getall("test_net_param"))
        n_iter = len(msg.getall("test_iter"))
        if not sources and n_iter:
            general = self._net_source("net", "net_param")
            if general is not None:
                sources = [general] * n_iter
        states = msg.getall("test_state")
        nets = []
        for i, src in enumerate(sources):
            phase, level, stages = _state(states[i] if i < len(states) else None, TEST)
            nets.append(Net(src, phase, level=level, stages=stages))
        return nets

    # ------------------------------------------------------------------ the loop
    def learning_rate(self):
        """Caffe's SGDSolver::GetLearningRate at the current iteration."""
        p, it = self.p, self.iter
        pol = p.lr_policy
        if pol == "fixed":
            return p.base_lr
        if pol == "step":
            return p.base_lr * math.pow(p.gamma, it // p.stepsize)
        if pol == "exp":
            return p.base_lr * math.pow(p.gamma, it)
        if pol == "inv":
            return p.base_lr * math.pow(1.0 + p.gamma * it, -p.power)
        if pol == "multistep":
            steps = [int(v) for v in self.param_msg.getall("stepvalue")]
            if self.current_step < len(steps) and it >= steps[self.current_step]:
                self.current_step += 1
            return p.base_lr * math.pow(p.gamma, self.current_step)
        if pol == "poly":
            return p.base_lr * math.pow(1.0 - it / p.max_iter, p.power)
        if pol == "sigmoid":
            return p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (it - p.stepsize))))
        raise ModelError(f"{self._file}: unknown lr_policy {pol!r}")

    def test_all(self):
        """Run every test net for its ``test_iter`` passes; -> per net {output: mean value}."""
        iters = [int(v) for v in self.param_msg.getall("test_iter")]
        scores = []
        for net, n in zip(self.test_nets, iters):
            acc = {}
            for _ in range(n):
                outs = net.forward()
                for k, v in outs.items():
                    acc[k] = acc.get(k, 0.0) + np.asarray(v, np.float64)
            scores.append({k: v / max(n, 1) for k, v in acc.items()})
        self.test_scores.append((self.iter, scores))
        return scores

    def step(self, iters):
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.p
        stop = self.iter + int(iters)
        self._losses, self.smoothed_loss = [], 0.0
        while self.iter < stop:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
            loss = 0.0
            for _ in range(p.iter_size):
                n = len(self.net._slots)
                loss += self.net._forward(0, n - 1)
                self.net._backward(n - 1, 0)
            loss /= p.iter_size
            self._update_smoothed_loss(loss)
            self.apply_update()
            self.iter += 1
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()

    def _update_smoothed_loss(self, loss):
        k = max(self.p.average_loss, 1)
        if len(self._losses) < k:
            self._losses.append(loss)
            self.smoothed_loss = sum(self._losses) / len(self._losses)
        else:
            self._losses = self._losses[1:] + [loss]
            self.smoothed_loss = sum(self._losses) / k

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (Caffe's Solver::Solve), optionally from a ``.solverstate``."""
        if resume_file:
            self.restore(resume_file)
        p = self.p
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if p.display and self.iter % p.display == 0:
            self.net.forward()
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()

    def apply_update(self):
        """One update of every learnable blob from its diff (Caffe's SGDSolver::ApplyUpdate)."""
        p = self.p
        rate = self.learning_rate()
        if p.clip_gradients >= 0:
            sumsq = sum(float(np.dot(b.diff.ravel().astype(np.float64), b.diff.ravel())) for _, _, b in self._learnable)
            l2 = math.sqrt(sumsq)
            if l2 > p.clip_gradients:
                f = _f32(p.clip_gradients / l2)
                for _, _, b in self._learnable:
                    b.diff[...] *= f
        for k, (s, i, blob) in enumerate(self._learnable):
            lr_mult, decay_mult = s.mults[i] if i < len(s.mults) else (1.0, 1.0)
            if p.iter_size > 1:
                blob.diff[...] *= _f32(1.0 / p.iter_size)
            decay = _f32(p.weight_decay * decay_mult)
            if decay:
                if p.regularization_type == "L2":
                    blob.diff[...] += decay * blob.data
                elif p.regularization_type == "L1":
                    blob.diff[...] += decay * np.sign(blob.data)
                else:
                    raise ModelError(f"{self._file}: unknown regularization_type {p.regularization_type!r}")
            self._update_value(k, blob, _f32(_f32(rate) * _f32(lr_mult)))
        for _, _, blob in self._learnable:
            blob.data[...] -= blob.diff

    def _update_value(self, k, blob, local_rate):
        h = self.history[k]
        h *= _f32(self.p.momentum)
        h += local_rate * blob.diff
        blob.diff[...] = h

    # ------------------------------------------------------------------ snapshots
    def _prefix(self):
        return f"{self.p.snapshot_prefix}_iter_{self.iter}"

    def snapshot(self):
        """Write ``<prefix>_iter_<n>.caffemodel`` and ``<prefix>_iter_<n>.solverstate``."""
        from ..io.caffemodel import _field, _varint
        model = self._prefix() + ".caffemodel"
        self.net.save(model)
        out = bytearray(_varint((1 << 3) | 0) + _varint(self.iter))
        out += _field(2, model.encode())
        for h in self.history:
            a = np.ascontiguousarray(h, "<f4")
            dims = b"".join(_varint(int(d)) for d in a.shape)
            out += _field(3, _field(7, _field(1, dims)) + _field(5, a.tobytes()))
        out += _varint((4 << 3) | 0) + _varint(self.current_step)
        with open(self._prefix() + ".solverstate", "wb") as f:
            f.write(out)
        return model

    def restore(self, state_file):
        """Resume from a ``.solverstate`` (needs protobuf: ``pip install minicaffe[pycaffe]``)."""
        from .io import blobproto_to_array
        from .proto import caffe_pb2
        st = caffe_pb2.SolverState()
        with open(os.fspath(state_file), "rb") as f:
            st.ParseFromString(f.read())
        self.iter, self.current_step = int(st.iter), int(st.current_step)
        if st.learned_net:
            self.net.copy_from(st.learned_net)
        if len(st.history) != len(self.history):
            raise ModelError(f"{state_file}: {len(st.history)} history blobs, the net has {len(self.history)}")
        for h, bp in zip(self.history, st.history):
            h[...] = blobproto_to_array(bp).reshape(h.shape)


class SGDSolver(Solver):
    type = "SGD"


class NesterovSolver(Solver):
    type = "Nesterov"

    def _update_value(self, k, blob, local_rate):
        h = self.history[k]
        prev = h.copy()
        m = _f32(self.p.momentum)
        h *= m
        h += local_rate * blob.diff
        blob.diff[...] = (_f32(1) + m) * h - m * prev


class AdaGradSolver(Solver):
    type = "AdaGrad"

    def _update_value(self, k, blob, local_rate):
        h = self.history[k]
        g = blob.diff
        h += g * g
        blob.diff[...] = local_rate * g / (np.sqrt(h) + _f32(self.p.delta))


class RMSPropSolver(Solver):
    type = "RMSProp"

    def _update_value(self, k, blob, local_rate):
        h = self.history[k]
        g = blob.diff
        d = _f32(self.p.rms_decay)
        h *= d
        h += (_f32(1) - d) * g * g
        blob.diff[...] = local_rate * g / (np.sqrt(h) + _f32(self.p.delta))


class AdaDeltaSolver(Solver):
    type = "AdaDelta"

    def _update_value(self, k, blob, local_rate):
        m, eps = _f32(self.p.momentum), _f32(self.p.delta)
        h1, h2 = self.history[k], self._history2[k]
        g = blob.diff
        h1 *= m
        h1 += (_f32(1) - m) * g * g
        upd = g * np.sqrt((h2 + eps) / (h1 + eps))
        h2 *= m
        h2 += (_f32(1) - m) * upd * upd
        blob.diff[...] = local_rate * upd


class AdamSolver(Solver):
    type = "Adam"

    def _update_value(self, k, blob, local_rate):
        b1, b2, eps = _f32(self.p.momentum), _f32(self.p.momentum2), _f32(self.p.delta)
        m, v = self.history[k], self._history2[k]
        g = blob.diff
        m *= b1
        m += (_f32(1) - b1) * g
        v *= b2
        v += (_f32(1) - b2) * g * g
        t = self.iter + 1
        corr = _f32(math.sqrt(1.0 - float(b2) ** t) / (1.0 - float(b1) ** t))
        blob.diff[...] = local_rate * corr * m / (np.sqrt(v) + eps)


def get_solver(filename):
    """The solver named by the prototxt's ``type`` (or legacy ``solver_type``), SGD by default."""
    msg = parse_file(os.fspath(filename))
    t = msg.get("type")
    if t is None and msg.get("solver_type") is not None:
        t = _LEGACY_TYPES.get(str(msg.get("solver_type")), str(msg.get("solver_type")))
    t = str(t or "SGD")
    if t not in _TYPES:
        raise ModelError(f"{filename}: unknown solver type {t!r} (known: {', '.join(_TYPES)})")
    return globals()[_TYPES[t]](filename)
