"""pycaffe's ``Net`` on minicaffe's layers: persistent blobs with ``data``/``diff``, Caffe's rules.

``Net(proto, [weights,] phase, level=, stages=, weights=)`` parses a prototxt with minicaffe's
own reader (no protobuf), keeps the layers whose NetState rules (``include``/``exclude`` with
``phase``, ``min_level``/``max_level``, ``stage``/``not_stage``) match, turns legacy ``input:``
fields into an ``Input`` layer named ``input``, and inserts ``Split`` layers where a blob feeds
several layers (Caffe's insert_splits.cpp, with its blob names), so gradients add up as Caffe's do.
Every blob is a :class:`Blob` whose arrays stay put: ``forward`` writes each top into its blob
(``net.blobs['data'].data[...] = x`` before a forward is the way in), every layer is re-shaped
from its bottoms' current shapes (Caffe's Reshape-on-forward), in-place layers keep a copy of
their input for the backward, loss tops are seeded with their ``loss_weight`` as diff, parameter
diffs accumulate (``clear_param_diffs``) and parameters without weights are filled by the
prototxt's fillers (Caffe's default: constant 0). The layer math is minicaffe's (``cpu``
backend, Numba); Python layers are called on the net's own blobs. The pycaffe conveniences
(``forward(**inputs)``, ``forward_all``, ``top_names``, ``set_input_arrays``...) follow BVLC's
pycaffe.py. It does not do parameter sharing by ``param { name }`` or GPU training: with
``set_mode_gpu`` the forward of layers that have CUDA kernels runs on the device.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from itertools import zip_longest

import numpy as np

from ..errors import MinicaffeError, ModelError, PrototxtError, WeightsError
from ..io.prototxt import Enum, Message, parse, parse_file
from ..layers import REGISTRY
from ..layers.dummy_data import fill
from ..layers.python_layer import TEST, TRAIN, Blob, make_python_layer
from ..net import V1_TYPE_NAMES
from ..solver import prototxt_multipliers
from . import _mode
from ._mode import PycaffeError

PHASE_NAMES = {TRAIN: "TRAIN", TEST: "TEST"}

#: engine layer types with a CUDA forward kernel (used in GPU mode)
_CUDA_TYPES = {"Convolution", "InnerProduct", "Pooling", "ReLU", "LRN", "Softmax", "Concat", "Eltwise",
               "Flatten", "Dropout", "BatchNorm", "Scale", "Clip", "ReLU6"}


def _phase_value(v):
    """A prototxt phase (Enum TRAIN/TEST or 0/1) -> 0/1."""
    s = str(v)
    if s in ("TRAIN", "0"):
        return TRAIN
    if s in ("TEST", "1"):
        return TEST
    raise ModelError(f"unknown phase {v!r} (TRAIN or TEST)")


def state_meets_rule(rule, phase, level, stages):
    """Caffe's Net::StateMeetsRule for one NetStateRule message."""
    if rule.get("phase") is not None and _phase_value(rule.get("phase")) != phase:
        return False
    if rule.get("min_level") is not None and level < int(rule.get("min_level")):
        return False
    if rule.get("max_level") is not None and level > int(rule.get("max_level")):
        return False
    if any(str(s) not in stages for s in rule.getall("stage")):
        return False
    return not any(str(s) in stages for s in rule.getall("not_stage"))


def layer_included(lp, phase, level, stages):
    """Caffe's FilterNet for one layer: any include rule must match, no exclude rule may."""
    inc, exc = lp.getall("include"), lp.getall("exclude")
    if inc and exc:
        raise ModelError(f"layer {lp.get('name')!r} gives both include and exclude rules")
    if inc:
        return any(state_meets_rule(r, phase, level, stages) for r in inc)
    return not any(state_meets_rule(r, phase, level, stages) for r in exc)


def _layer_entries(proto, path):
    """NetParameter Message -> list of (name, type, LayerParameter Message) in file order, with
    legacy V1 ``layers`` types renamed and top-level ``input:`` fields made an Input layer."""
    v1, cur = proto.getall("layers"), proto.getall("layer")
    if v1 and cur:
        raise PrototxtError("mixes 'layer' (current) and 'layers' (legacy V1) entries", path)
    out = []
    names = [str(n) for n in proto.getall("input")]
    if names:
        shapes = [tuple(s.getall("dim")) for s in proto.getall("input_shape")]
        dims = proto.getall("input_dim")
        if not shapes:
            if len(dims) != 4 * len(names):
                raise PrototxtError(f"{len(names)} inputs need {4 * len(names)} input_dim values, "
                                    f"found {len(dims)}", path)
            shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
        if len(shapes) != len(names):
            raise PrototxtError(f"{len(names)} inputs but {len(shapes)} input_shape entries", path)
        lp = Message()
        lp.add("name", "input")
        for n in names:
            lp.add("top", n)
        ip = Message()
        for s in shapes:
            bs = Message()
            for d in s:
                bs.add("dim", d)
            ip.add("shape", bs)
        lp.add("input_param", ip)
        lp.add("type", "Input")
        out.append(("input", "Input", lp))
    for lp in cur or v1:
        if not isinstance(lp, Message):
            raise PrototxtError("a layer entry must be a message { ... }", path)
        name, t = lp.get("name"), lp.get("type")
        if name is None:
            name = ""
        if t is None:
            raise PrototxtError(f"layer {name!r} has no type", path, lp.line, 1)
        t = str(t)
        if isinstance(lp.get("type"), Enum) or (v1 and t.isupper()):
            t = V1_TYPE_NAMES.get(t, t)
        lp2 = Message(lp.line)
        lp2.fields = [(k, v) for k, v in lp.fields if k != "type"] + [("type", t)]
        out.append((str(name), t, lp2))
    return out


def insert_splits(entries, where="<prototxt>"):
    """Caffe's InsertSplits: entries (name, type, lp) -> new entries with Split layers, and
    bottoms renamed ``<blob>_<producer>_<top index>_split_<k>``."""
    last_top, src, count, loss_w = {}, {}, {}, {}
    for i, (name, _t, lp) in enumerate(entries):
        for j, b in enumerate(lp.getall("bottom")):
            b = str(b)
            if b not in last_top:
                raise ModelError(f"{where}: layer {name!r} reads blob {b!r}, which no earlier layer produces")
            src[(i, j)] = last_top[b]
            count[last_top[b]] = count.get(last_top[b], 0) + 1
        tops = [str(x) for x in lp.getall("top")]
        for j, tn in enumerate(tops):
            last_top[tn] = (i, j)
        for j, w in enumerate(lp.getall("loss_weight")[:len(tops)]):
            ti = last_top[tops[j]]
            loss_w[ti] = float(w)
            if float(w):
                count[ti] = count.get(ti, 0) + 1
    out, split_idx = [], {}
    for i, (name, t, lp) in enumerate(entries):
        lp2 = Message(lp.line)
        j = 0
        for k, v in lp.fields:
            if k == "bottom":
                ti = src[(i, j)]
                if count.get(ti, 0) > 1:
                    pname = entries[ti[0]][0]
                    k_ = split_idx.get(ti, 0)
                    split_idx[ti] = k_ + 1
                    v = f"{v}_{pname}_{ti[1]}_split_{k_}"
                j += 1
            lp2.add(k, v)
        splits = []
        for j, tn in enumerate(str(x) for x in lp.getall("top")):
            n = count.get((i, j), 0)
            if n > 1:
                sp = Message()
                sp.add("name", f"{tn}_{name}_{j}_split")
                sp.add("bottom", tn)
                w = loss_w.get((i, j), 0.0)
                for k_ in range(n):
                    sp.add("top", f"{tn}_{name}_{j}_split_{k_}")
                    if w:
                        sp.add("loss_weight", w if k_ == 0 else 0.0)
                sp.add("type", "Split")
                if w:
                    lp2.fields = [(k, v) for k, v in lp2.fields if k != "loss_weight"]
                    split_idx[(i, j)] = split_idx.get((i, j), 0) + 1
                splits.append((sp.get("name"), "Split", sp))
        out.append((name, t, lp2))
        out.extend(splits)
    return out


class LayerView:
    """What ``net.layers[i]`` is for a built-in layer: ``type``, ``blobs`` (its parameters)."""

    def __init__(self, name, type_, blobs):
        self.name, self.type, self.blobs = name, type_, blobs

    def __repr__(self):
        return f"<{self.type} layer {self.name!r}>"


class _Slot:
    __slots__ = (
        "bottoms",
        "bshapes",
        "filled",
        "impl",
        "loss_weights",
        "lp",
        "mults",
        "name",
        "need_backward",
        "params",
        "python",
        "saved",
        "tops",
        "type",
    )


class Net:
    """A Caffe net with pycaffe's interface. See the module docstring.

    ``Net(network_file, phase, level=0, stages=(), weights=None)`` or the legacy
    ``Net(network_file, pretrained_param_file, phase)``; ``phase`` is ``caffe.TRAIN`` (0) or
    ``caffe.TEST`` (1).
    """

    def __init__(self, network_file, *args, level=0, stages=(), weights=None, phase=None):
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)):
            if weights is not None:
                raise TypeError("weights given twice (positionally and as weights=)")
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if args:
            raise TypeError("Net(network_file, [weights,] phase, level=0, stages=(), weights=None)")
        if phase is None:
            raise TypeError("Net() needs a phase: caffe.TRAIN or caffe.TEST")
        phase = int(phase)
        if phase not in (TRAIN, TEST):
            raise ValueError(f"phase must be caffe.TRAIN (0) or caffe.TEST (1), got {phase}")
        self.phase, self.level, self.stages = phase, int(level), [str(s) for s in stages]
        if isinstance(network_file, Message):
            proto, self._path = network_file, None
        elif isinstance(network_file, str) and "{" in network_file and not os.path.exists(network_file):
            proto, self._path = parse(network_file), None  # prototxt text (a convenience pycaffe lacks)
        elif isinstance(network_file, (str, os.PathLike)):
            self._path = os.fspath(network_file)
            proto = parse_file(self._path)  # PrototxtError names the file when it cannot be read
        else:
            proto, self._path = parse(str(network_file)), None  # e.g. a caffe_pb2.NetParameter
        self._build(proto)
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------ building
    def _where(self):
        return self._path or "<prototxt>"

    def _build(self, proto):
        self.name = str(proto.get("name", ""))
        self._force_backward = str(proto.get("force_backward", "false")).lower() in ("true", "1")
        entries = [e for e in _layer_entries(proto, self._path)
                   if layer_included(e[2], self.phase, self.level, self.stages)]
        entries = insert_splits(entries, self._where())
        self._blobs = OrderedDict()
        self._slots = []
        self.layers = []
        self._input_names = []
        # Caffe seeds from caffe.set_random_seed, else at random: here NumPy's global generator
        # (np.random.seed makes a run repeatable)
        seed = _mode.seed()
        self._rng = np.random.default_rng(np.random.randint(2 ** 31) if seed is None else seed)
        seen = set()
        for name, t, lp in entries:
            if name in seen:
                raise ModelError(f"{self._where()}: duplicate layer name {name!r}")
            seen.add(name)
            self._add_layer(name, t, lp)
        available = set()
        for sl in self._slots:
            available.difference_update(sl.bottoms)
            available.update(sl.tops)
        # Caffe keeps the unconsumed blobs in a std::set: outputs come sorted by name
        self._output_names = sorted(available)
        self._init_backward_flags()

    def _add_layer(self, name, t, lp):
        s = _Slot()
        s.name, s.type, s.lp = name, t, lp
        s.bottoms = [str(b) for b in lp.getall("bottom")]
        s.tops = [str(x) for x in lp.getall("top")]
        s.saved, s.filled, s.python = None, False, t == "Python"
        for b in s.bottoms:
            if b not in self._blobs:
                raise ModelError(f"{self._where()}: layer {name!r} reads blob {b!r}, which no earlier layer produces")
        for tn in s.tops:
            if tn not in self._blobs:
                self._blobs[tn] = Blob()
        bottom = [self._blobs[b] for b in s.bottoms]
        top = [self._blobs[x] for x in s.tops]
        if s.python:
            # the user's code raises its own exceptions (Caffe passes them through, too)
            s.impl = make_python_layer(lp, self.phase, f"{self._where()}: layer {name!r}")
            s.impl.setup(bottom, top)
            s.impl.reshape(bottom, top)
            s.params = s.impl.blobs
            self.layers.append(s.impl)
        else:
            if t not in REGISTRY:
                raise ModelError(f"{self._where()}: layer {name!r} has unknown or unsupported type {t!r} "
                                 f"(supported: {', '.join(sorted(REGISTRY))})")
            try:
                s.impl = REGISTRY[t](name, lp, s.bottoms, s.tops)
                if t in ("Dropout", "Data", "DummyData", "HDF5Data"):  # seeded from the net's generator
                    s.impl.phase = PHASE_NAMES[self.phase]
                    s.impl.rng = np.random.default_rng(self._rng.integers(2 ** 63))
                shapes = s.impl.shapes if t == "Input" else s.impl.setup([b.shape for b in bottom])
            except MinicaffeError:
                raise
            except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
                    ZeroDivisionError) as e:
                raise ModelError(f"{self._where()}: layer {name!r} ({t}): {e}") from None
            s.bshapes = [b.shape for b in bottom]
            if len(shapes) != len(top):
                raise ModelError(f"{self._where()}: layer {name!r} ({t}) produces {len(shapes)} outputs "
                                 f"but lists {len(top)} tops")
            for blob, shp in zip(top, shapes):
                blob.reshape(*shp)
            s.params = [Blob(shp, data=self._filler(s, i, shp)) for i, shp in enumerate(s.impl.param_shapes)]
            self.layers.append(LayerView(name, t, s.params))
            if t == "Input":
                self._input_names.extend(s.tops)
            elif t == "DummyData":  # Caffe fills every DummyData top once at set-up
                self._run_engine(s)
        n = len(s.params)
        s.mults = prototxt_multipliers(_MultView(lp, n)) if n else []
        lw = [float(w) for w in lp.getall("loss_weight")]
        if not lw and t.endswith("Loss") and s.tops:
            lw = [1.0]
        s.loss_weights = (lw + [0.0] * len(s.tops))[:len(s.tops)]
        self._seed_loss(s)
        self._slots.append(s)

    def _filler(self, s, i, shape):
        """Caffe's parameter init: ``weight_filler`` for blob 0, ``bias_filler`` for blob 1
        (from the layer's ``<type>_param``), constant 0 when absent."""
        key = "weight_filler" if i == 0 else "bias_filler"
        fp = None
        for k, v in s.lp.fields:
            if k.endswith("_param") and isinstance(v, Message) and v.has(key):
                fp = v.get(key)
        if s.type == "BatchNorm":
            return np.zeros(shape, np.float32)
        return fill(fp, shape, self._rng)

    def _seed_loss(self, s):
        for tn, w in zip(s.tops, s.loss_weights):
            if w:
                self._blobs[tn].diff[...] = w

    def _init_backward_flags(self):
        """Caffe's need-backward analysis: a layer runs backward when it has learnable
        parameters or a bottom that needs a gradient, and feeds a loss (or force_backward)."""
        need_blob = {}
        for s in self._slots:
            learn = any(lm != 0 for lm, _ in s.mults)
            s.need_backward = learn or any(need_blob.get(b, False) for b in s.bottoms)
            if self._force_backward and s.bottoms:
                s.need_backward = True
            for tn in s.tops:
                need_blob[tn] = s.need_backward or need_blob.get(tn, False)
        if self._force_backward:
            return
        under_loss = set()
        for s in reversed(self._slots):
            contributes = any(w for w in s.loss_weights) or any(t in under_loss for t in s.tops)
            if not contributes:
                s.need_backward = False
            else:
                under_loss.update(s.bottoms)

    # ------------------------------------------------------------------ forward / backward
    def _run_engine(self, s):
        bottom = [self._blobs[b] for b in s.bottoms]
        shapes = [b.shape for b in bottom]
        if shapes != s.bshapes:  # Caffe re-shapes every layer from its bottoms on each forward
            try:
                tshapes = s.impl.setup(shapes)
            except MinicaffeError:
                raise
            except (TypeError, ValueError, IndexError, ZeroDivisionError) as e:
                raise ModelError(f"{self._where()}: layer {s.name!r} ({s.type}): "
                                 f"cannot reshape for {shapes}: {e}") from None
            for p, shp in zip(s.params, s.impl.param_shapes):
                if p.shape != tuple(shp):
                    raise ModelError(f"{self._where()}: layer {s.name!r} ({s.type}): "
                                     f"input {shapes} needs parameter shape "
                                     f"{tuple(shp)}, the blob is {p.shape}")
            s.bshapes = shapes
            for tn, shp in zip(s.tops, tshapes):
                blob = self._blobs[tn]
                if blob.shape != tuple(shp):
                    blob.reshape(*shp)
                    self._seed_loss(s)
        inplace = any(b in s.tops for b in s.bottoms)
        arrays = [b.data for b in bottom]
        if inplace:  # the backward needs the value from before this layer overwrote it
            arrays = [a.copy() for a in arrays]
        s.saved = arrays if inplace else None
        params = [p.data for p in s.params]
        backend = "cpu"
        if _mode.mode() == "gpu" and s.type in _CUDA_TYPES:
            from ..backend import to_device, to_host
            tops = s.impl.forward([to_device(a) for a in arrays], [to_device(p) for p in params], "cuda")
            tops = [to_host(t) for t in tops]
        else:
            tops = s.impl.forward(arrays, params, backend, inplace=False)
        refill = getattr(s.impl, "refill", None)
        for j, (tn, arr) in enumerate(zip(s.tops, tops)):
            if refill is not None and s.filled and not refill[j]:
                continue  # a constant DummyData top keeps what the caller wrote into it
            blob = self._blobs[tn]
            if blob.shape != np.shape(arr):
                blob.reshape(*np.shape(arr))
                self._seed_loss(s)
            blob.data[...] = arr
        s.filled = True

    def _forward(self, start, end):
        """Run layers ``start``..``end`` (indices, inclusive); returns the weighted loss."""
        loss = 0.0
        for i in range(start, end + 1):
            s = self._slots[i]
            if s.type == "Input":
                continue
            if s.python:
                bottom = [self._blobs[b] for b in s.bottoms]
                top = [self._blobs[x] for x in s.tops]
                before = [t.shape for t in top]
                s.impl.reshape(bottom, top)
                if [t.shape for t in top] != before:
                    self._seed_loss(s)
                s.impl.forward(bottom, top)
            else:
                self._run_engine(s)
            for tn, w in zip(s.tops, s.loss_weights):
                if w:
                    loss += w * float(self._blobs[tn].data.sum())
        return loss

    def _backward(self, start, end):
        """Backpropagate from layer ``start`` down to layer ``end`` (indices, start >= end)."""
        for i in range(start, end - 1, -1):
            s = self._slots[i]
            if not s.need_backward or s.type == "Input":
                continue
            if s.python:
                bottom = [self._blobs[b] for b in s.bottoms]
                top = [self._blobs[x] for x in s.tops]
                s.impl.backward(top, [True] * len(bottom), bottom)
                continue
            if not hasattr(s.impl, "backward"):
                continue
            tds = [self._blobs[x].diff for x in s.tops]
            bots = s.saved if s.saved is not None else [self._blobs[b].data for b in s.bottoms]
            tops = [self._blobs[x].data for x in s.tops]
            bds, pds = s.impl.backward(tds, bots, tops, [p.data for p in s.params], "cpu")
            for b, d in zip(s.bottoms, bds):
                if d is not None:
                    self._blobs[b].set_diff(d)
            for p, d, (lm, _) in zip(s.params, pds or [], s.mults):
                if d is not None and lm != 0:
                    p.diff[...] += d

    # ------------------------------------------------------------------ pycaffe's interface
    @property
    def blobs(self):
        """OrderedDict blob name -> Blob, inputs to outputs."""
        return self._blobs

    @property
    def _blob_names(self):
        return list(self._blobs)

    @property
    def _layer_names(self):
        return [s.name for s in self._slots]

    @property
    def layer_dict(self):
        return OrderedDict((s.name, layer) for s, layer in zip(self._slots, self.layers))

    @property
    def params(self):
        """OrderedDict layer name -> [Blob] for the layers that have parameters."""
        return OrderedDict((s.name, s.params) for s in self._slots if len(s.params) > 0)

    @property
    def inputs(self):
        return list(self._input_names)

    @property
    def outputs(self):
        return list(self._output_names)

    @property
    def _inputs(self):
        """Indices of the input blobs in ``blobs`` (pycaffe's low-level attribute)."""
        names = list(self._blobs)
        return [names.index(b) for b in self._input_names]

    @property
    def _outputs(self):
        names = list(self._blobs)
        return [names.index(b) for b in self._output_names]

    @property
    def blob_loss_weights(self):
        w = OrderedDict((b, 0.0) for b in self._blobs)
        for s in self._slots:
            for tn, lw in zip(s.tops, s.loss_weights):
                w[tn] = lw
        return w

    @property
    def top_names(self):
        return OrderedDict((s.name, list(s.tops)) for s in self._slots)

    @property
    def bottom_names(self):
        return OrderedDict((s.name, list(s.bottoms)) for s in self._slots)

    def _index(self, name):
        names = self._layer_names
        if name not in names:
            raise ValueError(f"{name!r} is not a layer of the net")
        return names.index(name)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net (layers ``start``..``end`` by name, inclusive) and return
        ``{blob: data}`` for the outputs (or the tops of ``end``) plus ``blobs``. Keyword
        arguments fill the input blobs (all inputs, batch-sized) first."""
        blobs = list(blobs or [])
        start_ind = 0 if start is None else self._index(start)
        if end is not None:
            end_ind = self._index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self._slots) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise PycaffeError("Input blob arguments do not match net inputs.")
            for name, arr in kwargs.items():
                if arr.shape[0] != self._blobs[name].shape[0]:
                    raise PycaffeError("Input is not batch sized")
                self._blobs[name].data[...] = arr
        self._forward(start_ind, end_ind)
        return {out: self._blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backpropagate (from layer ``start`` down to ``end``, by name) and return
        ``{blob: diff}`` for the inputs (or the bottoms of ``end``) plus ``diffs``. Keyword
        arguments set the output blobs' diffs first."""
        diffs = list(diffs or [])
        start_ind = len(self._slots) - 1 if start is None else self._index(start)
        if end is not None:
            end_ind = self._index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise PycaffeError("Top diff arguments do not match net outputs.")
            for name, d in kwargs.items():
                if d.shape[0] != self._blobs[name].shape[0]:
                    raise PycaffeError("Diff is not batch sized")
                self._blobs[name].diff[...] = d
        self._backward(start_ind, end_ind)
        return {out: self._blobs[out].diff for out in outputs}

    def _batch(self, blobs):
        """Split ``{name: array}`` into batches of the net's batch size, zero-padding the last."""
        num = len(next(iter(blobs.values())))
        batch_size = next(iter(self._blobs.values())).shape[0]
        full, rem = divmod(num, batch_size)
        for b in range(full):
            i = b * batch_size
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        if rem:
            yield {name: np.concatenate([blobs[name][-rem:],
                                         np.zeros((batch_size - rem,) + blobs[name].shape[1:])])
                   for name in blobs}

    def forward_all(self, blobs=None, **kwargs):
        """forward() over inputs of any length, in batches; -> {blob: array of all rows}."""
        all_outs = {out: [] for out in set(self.outputs + (blobs or []))}
        for batch in self._batch(kwargs):
            for out, arr in self.forward(blobs=blobs, **batch).items():
                all_outs[out].extend(arr.copy())
        for out, rows in all_outs.items():
            all_outs[out] = np.asarray(rows)
        pad = len(next(iter(all_outs.values()))) - len(next(iter(kwargs.values())))
        if pad:
            for out in all_outs:
                all_outs[out] = all_outs[out][:-pad]
        return all_outs

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward() and backward() over inputs / output diffs of any length, in batches."""
        all_outs = {out: [] for out in set(self.outputs + (blobs or []))}
        all_diffs = {d: [] for d in set(self.inputs + (diffs or []))}
        fwd = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
        bwd = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
        for fb, bb in zip_longest(fwd, bwd, fillvalue={}):
            for out, arr in self.forward(blobs=blobs, **fb).items():
                all_outs[out].extend(arr.copy())
            for d, arr in self.backward(diffs=diffs, **bb).items():
                all_diffs[d].extend(arr.copy())
        for out, d in zip(all_outs, all_diffs):
            all_outs[out] = np.asarray(all_outs[out])
            all_diffs[d] = np.asarray(all_diffs[d])
        pad = len(next(iter(all_outs.values()))) - len(next(iter(kwargs.values())))
        if pad:
            for out, d in zip(all_outs, all_diffs):
                all_outs[out] = all_outs[out][:-pad]
                all_diffs[d] = all_diffs[d][:-pad]
        return all_outs, all_diffs

    def reshape(self):
        """Propagate the input blobs' shapes through every layer (no forward)."""
        for s in self._slots:
            if s.type == "Input" or s.type == "DummyData":
                continue
            bottom = [self._blobs[b] for b in s.bottoms]
            top = [self._blobs[x] for x in s.tops]
            if s.python:
                s.impl.reshape(bottom, top)
                continue
            shapes = [b.shape for b in bottom]
            if shapes != s.bshapes:
                tshapes = s.impl.setup(shapes)
                s.bshapes = shapes
                for blob, shp in zip(top, tshapes):
                    if blob.shape != tuple(shp):
                        blob.reshape(*shp)
                self._seed_loss(s)

    def clear_param_diffs(self):
        for s in self._slots:
            for p in s.params:
                p.diff[...] = 0

    def share_with(self, other):
        """Use ``other``'s parameter blobs (same memory) for the layers of the same name."""
        theirs = {s.name: s for s in other._slots}
        for _k, s in enumerate(self._slots):
            o = theirs.get(s.name)
            if o is None or not s.params:
                continue
            if len(o.params) != len(s.params) or any(a.shape != b.shape for a, b in zip(o.params, s.params)):
                raise ValueError(f"cannot share layer {s.name!r}: parameter shapes differ")
            for i, p in enumerate(o.params):
                s.params[i] = p
            if s.python:
                s.impl.blobs[:] = list(o.params)

    def _load_arrays(self, source, path):
        for s in self._slots:
            if s.name not in source:
                continue
            arrays = list(source[s.name])
            if not s.params and not arrays:
                continue
            if len(arrays) != len(s.params):
                raise WeightsError(f"{path}: layer {s.name!r} has {len(arrays)} parameter blobs, "
                                   f"the net expects {len(s.params)}")
            for i, (p, a) in enumerate(zip(s.params, arrays)):
                a = np.asarray(a, np.float32)
                if a.shape != p.shape:
                    squeezed = a.shape
                    while len(squeezed) > len(p.shape) and squeezed[0] == 1:
                        squeezed = squeezed[1:]
                    if squeezed != p.shape:
                        raise WeightsError(f"{path}: layer {s.name!r} blob {i} has shape {a.shape}, "
                                           f"the net expects {p.shape}")
                    a = a.reshape(p.shape)
                p.data[...] = a

    def copy_from(self, path):
        """Load parameters by layer name from a ``.caffemodel`` (or Caffe's ``.h5`` weights)."""
        path = os.fspath(path)
        if path.endswith((".h5", ".hdf5")):
            self.load_hdf5(path)
            return
        from ..io.caffemodel import read_caffemodel
        _, layers = read_caffemodel(path)
        self._load_arrays(OrderedDict((k, v[1]) for k, v in layers.items()), path)

    def save(self, path):
        """Write the parameters as a binary ``.caffemodel`` (layers by name, as Caffe's)."""
        from ..io.caffemodel import write_caffemodel
        write_caffemodel(os.fspath(path), [(s.name, s.type, [p.data for p in s.params]) for s in self._slots],
                         name=self.name)

    def save_hdf5(self, path):
        """Caffe's HDF5 weights: ``data/<layer>/<i>`` and ``diff/<layer>/<i>``."""
        import h5py
        with h5py.File(os.fspath(path), "w") as f:
            gd, gg = f.create_group("data"), f.create_group("diff")
            for s in self._slots:
                if not s.params:
                    continue
                ld, lg = gd.create_group(s.name), gg.create_group(s.name)
                for i, p in enumerate(s.params):
                    ld.create_dataset(str(i), data=p.data)
                    lg.create_dataset(str(i), data=p.diff)

    def load_hdf5(self, path):
        import h5py
        path = os.fspath(path)
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise WeightsError(f"{path}: no 'data' group (not Caffe HDF5 weights)")
            g = f["data"]
            source = {k: [g[k][str(i)][()] for i in range(len(g[k]))] for k in g}
        self._load_arrays(source, path)

    def set_input_arrays(self, data, labels):
        """Hand (N, C, H, W) data and N labels to the net's first layer, a MemoryData layer."""
        first = self._slots[0] if self._slots else None
        if first is None or first.type != "MemoryData":
            raise ModelError(f"{self._where()}: set_input_arrays may only be called if the first layer is a "
                             "MemoryData layer")
        first.impl.reset(data, labels)

    def __repr__(self):
        return f"<minicaffe pycaffe Net {self.name!r}: {len(self._slots)} layers>"


class _MultView:
    """Adapter so minicaffe.solver.prototxt_multipliers reads a layer's ``param`` specs."""

    def __init__(self, lp, n):
        self.lp, self.param_shapes = lp, [()] * n
