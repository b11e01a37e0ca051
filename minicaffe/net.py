"""The net: a plain loop over Caffe layers, with every blob exposed and before/after hooks.

``Net(prototxt, weights=None, backend="cpu")`` parses a deploy prototxt (current or legacy V1
format), builds one layer object per ``layer``/``layers`` entry of the TEST phase, infers blob
shapes, and loads weights from a ``.caffemodel`` or our ``.h5`` (or seeds random ones).
``forward`` runs layers ``start..end`` in file order (a valid topological order in Caffe files,
which is what makes GoogLeNet's branches and Concat work) and returns every blob by its Caffe
name, with Caffe's in-place semantics: after ``relu1`` the blob ``conv1`` is post-ReLU. The
pre-activation value can be kept under ``<blob>.pre``. Profiling and activation capture attach
through :meth:`Net.add_hook`; no layer contains timing code. Training (the TRAIN phase and the
backward pass) lives in :mod:`minicaffe.train`; ``set_phase``/``backward`` here are thin entries.
"""
from __future__ import annotations

import concurrent.futures
import operator
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from itertools import chain

import numba
import numpy as np

from . import runtime as _runtime
from .backend import check_backend, is_device_array, synchronize, to_device, to_host
from .errors import MinicaffeError, ModelError, NonFiniteWeightsWarning, PrototxtError, WeightsError
from .io import file_digest
from .io.caffe_schema import check_net
from .io.prototxt import Enum, Message, parse, parse_file
from .layers import REGISTRY

#: suffix of the blob that keeps a value from before the in-place layers (ReLU, Dropout) ran
PRE_SUFFIX = ".pre"

# legacy V1 enum type names -> current type strings
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

#: refuse nets larger than this many parameters (a corrupt prototxt must not exhaust memory)
MAX_PARAMS = 4 * 10**9

#: most elements of one blob, as in Caffe (a blob's count must fit in an int)
MAX_BLOB_COUNT = 2**31 - 1

#: most axes of one blob (Caffe's kMaxBlobAxes)
MAX_BLOB_AXES = 32

#: layers whose top may share memory with their bottom (so later in-place kernels must copy)
_ALIASING_TYPES = {"Flatten", "Dropout"}
#: kinds of :meth:`Net._steps` entries
_LAYER, _CHAIN, _FUSED = 0, 1, 2


def _fusable_activation(layer, blob):
    """For a layer rectifying ``blob`` in place as the producing layer's output pass can: None if
    it cannot be fused, else the kernels' keywords — ReLU with slope 0 ``{"relu": True}``, a Clip
    / ReLU6 from 0 to hi ``{"relu": True, "relu_cap": hi}``."""
    if layer.bottoms != [blob] or layer.tops != [blob]:
        return None
    if layer.type == "ReLU" and getattr(layer, "slope", 0.0) == 0.0:
        return {"relu": True}
    if layer.type in ("Clip", "ReLU6") and getattr(layer, "lo", None) == 0.0:
        return {"relu": True, "relu_cap": float(layer.hi)}
    return None


def _phase_ok(lp, phase):
    for rule in lp.getall("include"):
        if rule.get("phase") is not None and str(rule.get("phase")) != phase:
            return False
    for rule in lp.getall("exclude"):
        if rule.get("phase") is not None and str(rule.get("phase")) == phase:
            return False
    return True


def load_net_definition(prototxt):
    """Path, text or Message -> (Message, source path or None, text)."""
    if isinstance(prototxt, Message):
        return prototxt, None, None
    if isinstance(prototxt, os.PathLike) or (isinstance(prototxt, str) and "{" not in prototxt
                                               and "\n" not in prototxt):
        path = os.fspath(prototxt)
        msg = parse_file(path)
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return msg, path, text
    return parse(prototxt), None, str(prototxt)


#: run a frozen net's forward as one executor program where it can (:meth:`Net._program`);
#: ``MINICAFFE_PROGRAM=0`` in the environment before the import: never (layer by layer)
PROGRAMS = os.environ.get("MINICAFFE_PROGRAM", "1") != "0"
#: an array's WRITEABLE flag (a C-level getter, mapped over the weights)
_WRITEABLE = operator.attrgetter("flags.writeable")


class Net:
    """A Caffe net for inference. See the module docstring.

    ``fuse_relu`` (attribute, default True): on the cpu backend, a Convolution or InnerProduct
    followed by an in-place ReLU (slope 0) or Clip / ReLU6 from 0 applies it in its own output pass
    and the activation layer does no work. Blobs are identical (Caffe's in-place semantics: the blob is post-ReLU
    either way); both layers' hooks still run, and the producing layer's after-hook already sees
    the rectified values. ``keep_pre_activation=True`` turns fusion off.

    ``channels_last`` (attribute, default True): on the cpu backend (with fusion on), a layer whose
    every reader works along channel vectors (1x1 and depthwise convolutions, residual sums,
    activations, global pooling: :meth:`Layer.reads_channels_last`) writes its top with (N, H, W, C)
    memory. Blobs keep their (N, C, H, W) shape and values; only the strides differ (a transposed
    view), so a chain of such layers never changes layout. False: every blob C-contiguous NCHW.
    With ``channels_last``, ``fetch`` given and no hooks, a 1x1 expansion (with its fused
    activation) read only by the depthwise convolution after it runs inside that layer's kernel,
    band by band, and its blob is not kept (MobileNet v2 / EfficientNet blocks: the block's largest
    tensor never goes to memory); name it in ``fetch`` to have it.

    Parameters
    ----------
    prototxt : path, prototxt text or parsed Message
    weights : path to ``.caffemodel`` / ``.h5``, a mapping name -> [arrays], or None (seeded random)
    backend : ``"numpy"`` (reference), ``"cpu"`` (Numba) or ``"cuda"``
    seed : seed of the random weights when ``weights`` is None
    strict : refuse weights holding NaN/Inf (:class:`WeightsError`) instead of warning
        (:class:`NonFiniteWeightsWarning`, naming each such layer)
    """

    fuse_relu = True
    channels_last = True

    def __init__(self, prototxt: str | os.PathLike | Message, weights: str | os.PathLike | Mapping | None = None,
                 backend: str = "cpu", seed: int = 0, phase: str = "TEST", strict: bool = False) -> None:
        self.backend = check_backend(backend)
        self.phase = phase
        self.strict = bool(strict)
        self.proto, self.prototxt_path, self.prototxt_text = load_net_definition(prototxt)
        self.name = str(self.proto.get("name", "net"))
        self._build_layers()
        self.blob_shapes = self._infer_shapes(self.input_shapes)
        # the plans made for these shapes are keyed by this token (not by id() of the dict: a
        # freed dict's id comes back for the next one)
        self._shapes_token = object()
        self.params: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self.weights_path = None
        self.weights_sha1 = None
        n_params = sum(int(np.prod(s)) for l in self.layers for s in l.param_shapes)
        if n_params > MAX_PARAMS:
            raise ModelError(f"{self._where()}: the net would have {n_params:,} parameters "
                             f"(more than {MAX_PARAMS:,}); check num_output and input shapes")
        if weights is None:
            rng = np.random.default_rng(seed)
            for layer in self.layers:
                if layer.param_shapes:
                    self.params[layer.name] = layer.init_params(rng)
        else:
            self.load_weights(weights)
        self.blobs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._hooks = []
        if phase == "TRAIN":
            self.set_phase("TRAIN", seed)

    # ------------------------------------------------------------------ building
    def _where(self):
        return self.prototxt_path or "<prototxt>"

    def _named(self, e):
        """A layer's ModelError with the prototxt file in front (one line naming file and problem)."""
        where = self._where()
        return e if str(e).startswith(where) else ModelError(f"{where}: {e}")

    def _build_layers(self):
        proto = self.proto
        check_net(proto, self.prototxt_path)
        v1 = proto.getall("layers")
        cur = proto.getall("layer")
        if v1 and cur:
            raise PrototxtError("mixes 'layer' (current) and 'layers' (legacy V1) entries", self.prototxt_path)
        entries = cur or v1
        self.layers = []
        self.input_names, self.input_shapes = [], {}
        # legacy top-level inputs: input: "data" + input_dim x4 (or input_shape { dim })
        names = [str(n) for n in proto.getall("input")]
        dims = proto.getall("input_dim")
        shapes = proto.getall("input_shape")
        if names:
            if shapes:
                if len(shapes) != len(names):
                    raise PrototxtError(f"{len(names)} inputs but {len(shapes)} input_shape entries",
                                        self.prototxt_path)
                shp = [tuple(s.getall("dim")) for s in shapes]
            else:
                if len(dims) != 4 * len(names):
                    raise PrototxtError(f"{len(names)} inputs need {4 * len(names)} input_dim values, "
                                        f"found {len(dims)}",
                                        self.prototxt_path)
                shp = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
            for n, s in zip(names, shp):
                self._add_input(n, s)
        for lp in entries:
            if not isinstance(lp, Message):
                raise PrototxtError("a layer entry must be a message { ... }", self.prototxt_path)
            if not _phase_ok(lp, self.phase):
                continue
            name = lp.get("name")
            t = lp.get("type")
            if name is None:
                raise PrototxtError(f"layer on line {lp.line} has no name", self.prototxt_path, lp.line, 1)
            if t is None:
                raise PrototxtError(f"layer {name!r} has no type", self.prototxt_path, lp.line, 1)
            t = str(t)
            if isinstance(lp.get("type"), Enum) or (v1 and t.isupper()):
                t = V1_TYPE_NAMES.get(t, t)
            if t not in REGISTRY:
                raise ModelError(f"{self._where()}: layer {name!r} has unknown or unsupported type {t!r} "
                                 f"(supported: {', '.join(sorted(REGISTRY))})")
            lp2 = Message(lp.line)
            lp2.fields = [(k, v) for k, v in lp.fields if k != "type"] + [("type", t)]
            try:
                layer = REGISTRY[t](str(name), lp2, [str(b) for b in lp.getall("bottom")],
                                    [str(x) for x in lp.getall("top")])
            except ModelError as e:
                raise self._named(e) from None
            except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
                raise ModelError(f"{self._where()}: layer {name!r} ({t}) has an invalid parameter: {e}") from None
            if t == "Input":
                for top, s in zip(layer.tops, layer.shapes):
                    self._add_input(top, s, layer=False)
            self.layers.append(layer)
        if not self.layers:
            raise ModelError(f"{self._where()}: the net has no layers")
        # as in Caffe, a blob has one producer; a later layer may only rewrite it in place
        # (its top i names its own bottom i, e.g. ReLU: bottom "conv1" top "conv1")
        produced = {n: "input" for n in self.input_names if n not in
                    {t for l in self.layers if l.type == "Input" for t in l.tops}}
        for layer in self.layers:
            for i, top in enumerate(layer.tops):
                inplace = i < len(layer.bottoms) and layer.bottoms[i] == top
                if top in produced and not inplace:
                    raise ModelError(f"{self._where()}: blob {top!r} is produced by both {produced[top]} and layer "
                                     f"{layer.name!r} (only an in-place layer, with the same bottom and top, may "
                                     "write an existing blob)")
                if top in layer.tops[:i]:
                    raise ModelError(f"{self._where()}: layer {layer.name!r} lists top {top!r} twice")
                produced.setdefault(top, f"layer {layer.name!r}")
        seen = set()
        for layer in self.layers:
            if layer.name in seen:
                raise ModelError(f"{self._where()}: duplicate layer name {layer.name!r}")
            seen.add(layer.name)
        self._layer_index = {l.name: i for i, l in enumerate(self.layers)}

    def _add_input(self, name, shape, layer=True):
        if len(shape) == 0 or len(shape) > MAX_BLOB_AXES or any(
                (not isinstance(d, int)) or isinstance(d, bool) or d < 1 for d in shape):
            raise PrototxtError(f"input {name!r} has an invalid shape {shape}", self.prototxt_path)
        if name in self.input_shapes:
            raise PrototxtError(f"input {name!r} is declared twice", self.prototxt_path)
        self.input_names.append(name)
        self.input_shapes[name] = tuple(shape)

    def _infer_shapes(self, input_shapes):
        shapes = OrderedDict((k, tuple(v)) for k, v in input_shapes.items())
        for layer in self.layers:
            if layer.type == "Input":
                continue
            for b in layer.bottoms:
                if b not in shapes:
                    raise ModelError(f"{self._where()}: layer {layer.name!r} reads blob {b!r}, "
                                     "which no earlier layer produces")
            try:
                tops = layer.setup([shapes[b] for b in layer.bottoms])
            except ModelError as e:
                raise self._named(e) from None
            except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
                    ZeroDivisionError) as e:
                raise layer.err(f"cannot set up for input shapes {[shapes[b] for b in layer.bottoms]}: {e}") from None
            if len(tops) != len(layer.tops):
                raise layer.err(f"produces {len(tops)} outputs but lists {len(layer.tops)} tops")
            for t, s in zip(layer.tops, tops):
                shapes[t] = tuple(int(d) for d in s)
        for name, shp in shapes.items():  # declared sizes, before any blob is allocated
            count = 1
            for d in shp:
                count *= d
            if count > MAX_BLOB_COUNT:
                raise ModelError(f"{self._where()}: blob {name!r} would have shape {shp} = {count:,} elements, "
                                 f"more than {MAX_BLOB_COUNT:,} (Caffe's limit); check the input shape")
        return shapes

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights: str | os.PathLike | Mapping) -> None:
        """Load parameters by layer name from a ``.caffemodel``, ``.h5`` or a mapping."""
        if isinstance(weights, (str, os.PathLike)):
            path = os.fspath(weights)
            # the checksum (recorded by extract and finetune) is hashed on a second thread while
            # this one parses the file: hashlib releases the GIL, and a 240 MB CaffeNet costs
            # ~0.25 s of hashing that would otherwise add to every start-up
            digest = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="minicaffe-sha1")
            sha1 = digest.submit(file_digest, path)
            digest.shutdown(wait=False)
            if path.endswith((".h5", ".hdf5")):
                from .io.h5weights import load_h5
                # only the layers of this net are read, each checked against its shape first
                expected = {l.name: l.param_shapes for l in self.layers if l.param_shapes}
                source = load_h5(path, expected=expected)
            else:
                from .io.caffemodel import read_caffemodel
                _, layers = read_caffemodel(path)
                source = OrderedDict((k, v[1]) for k, v in layers.items())
            self.weights_path = path
            self.weights_sha1 = sha1.result()
        else:
            path = "<weights mapping>"
            source = weights
        for layer in self.layers:
            if not layer.param_shapes:
                continue
            if layer.name not in source:
                raise WeightsError(f"{path}: no weights for layer {layer.name!r} ({layer.type}); "
                                   f"expected shapes {layer.param_shapes}")
            blobs = list(source[layer.name])
            if len(blobs) != len(layer.param_shapes):
                raise WeightsError(f"{path}: layer {layer.name!r} has {len(blobs)} parameter blobs, "
                                   f"expected {len(layer.param_shapes)} (shapes {layer.param_shapes})")
            out = []
            for i, (a, shp) in enumerate(zip(blobs, layer.param_shapes)):
                a = np.asarray(a, dtype=np.float32)
                if tuple(a.shape) != tuple(shp):
                    # legacy V1 blobs are 4-D (num, channels, height, width): accept (1,1,M,K) for (M,K)
                    squeeze = tuple(d for d in a.shape)
                    while len(squeeze) > len(shp) and squeeze[0] == 1:
                        squeeze = squeeze[1:]
                    if squeeze != tuple(shp):
                        raise WeightsError(f"{path}: layer {layer.name!r} blob {i} has shape {tuple(a.shape)}, "
                                           f"expected {tuple(shp)}")
                    a = a.reshape(shp)
                out.append(np.ascontiguousarray(a))
            self.params[layer.name] = out
        self._check_finite(path)

    def _check_finite(self, path):
        """Warn (or with ``strict`` refuse) for each layer whose weights hold NaN or Inf."""
        bad = []
        for name, blobs in self.params.items():
            for i, a in enumerate(blobs):
                # one float reduction first: its sum is finite unless some value is not
                if np.isfinite(a.sum()):
                    continue
                n = int(a.size - np.count_nonzero(np.isfinite(a)))
                if n:
                    bad.append(f"layer {name!r} blob {i} has {n} non-finite value{'s' if n > 1 else ''} (NaN/Inf)")
        if not bad:
            return
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        msg = f"{path}: {'; '.join(bad[:3])}{more}; its features will be NaN"
        if self.strict:
            raise WeightsError(msg)
        warnings.warn(msg, NonFiniteWeightsWarning, stacklevel=3)

    def freeze(self, frozen: bool = True) -> None:
        """Make the parameters read-only (``True``) or editable again (``False``).

        The cpu kernels keep packed or transformed copies of the weights. While the parameters
        are editable, every forward compares each array with the values its copy was made from (a
        pass over all the weights); frozen parameters cannot change, so that pass is skipped.
        Feature extraction, profiling and benchmarks freeze their nets. Writing into a frozen
        array raises numpy's "assignment destination is read-only": call ``freeze(False)`` first.
        """
        from .layers.convolution.cache import forget
        for blobs in self.params.values():
            for i, a in enumerate(blobs):
                if frozen and not a.flags.owndata:
                    a = blobs[i] = a.copy()       # own the memory: no other array can change it
                forget(a)
                a.flags.writeable = not frozen
        # whole-forward programs hold copies of the weights: made again from the current values
        self._programs = {}
        self._last_program = None
        self._fast = None

    @property
    def frozen(self) -> bool:
        """True when every parameter array is read-only (see :meth:`freeze`)."""
        return all(not a.flags.writeable for blobs in self.params.values() for a in blobs)

    def save_h5(self, path: str | os.PathLike, **attrs) -> None:
        from .io.h5weights import save_h5
        save_h5(path, self.params, prototxt=self.prototxt_text or "", **attrs)

    # ------------------------------------------------------------------ hooks
    def add_hook(self, before: Callable | None = None, after: Callable | None = None) -> tuple:
        """Register callables ``before(net, index, layer)`` / ``after(net, index, layer, tops)``.

        Returns a handle; ``net.remove_hook(handle)`` detaches it.
        """
        h = (before, after)
        self._hooks.append(h)
        return h

    def remove_hook(self, handle):
        self._hooks.remove(handle)

    def layer_index(self, name):
        if name not in self._layer_index:
            raise ModelError(f"{self._where()}: no layer named {name!r}")
        return self._layer_index[name]

    @property
    def layer_names(self):
        return [l.name for l in self.layers]

    # ------------------------------------------------------------------ forward
    def _check_input(self, name, x):
        want = self.input_shapes[name]
        if x.ndim != len(want):
            raise ModelError(f"input {name!r} must be {len(want)}-D like {want}, got shape {tuple(x.shape)}")
        if x.ndim >= 2 and x.shape[1] != want[1]:
            raise ModelError(f"input {name!r} has {x.shape[1]} channels but the net expects {want[1]} "
                             f"(shape {want}); images must be (N, C, H, W)")
        if x.shape[0] < 1:
            raise ModelError(f"input {name!r} is an empty batch")

    #: the first forward applies :func:`minicaffe.runtime.auto_tune` (False on the class or a net: never)
    tune_runtime = True

    def forward(self, data: np.ndarray | None = None, start: str | None = None, end: str | None = None,
                keep_pre_activation: bool = False, fetch: Iterable[str] | None = None,
                **inputs: np.ndarray) -> OrderedDict[str, np.ndarray]:
        """Run layers ``start``..``end`` (layer names, inclusive) and return blobs by name.

        data : (N, C, H, W) float array for the first input (others by name in ``inputs``).
        keep_pre_activation : also keep ``<blob>.pre`` = the value before in-place layers ran.
        fetch : blob names to return (default: every blob); with the cuda backend only these
            are copied back to the host.
        Returns an OrderedDict name -> ndarray; ``net.blobs`` holds the same afterwards.
        """
        if self.tune_runtime and _runtime.tuning() is None:
            _runtime.auto_tune()
        if fetch is not None and data is not None and not inputs and start is None and end is None \
                and not keep_pre_activation and self.__dict__.get("_fast") is not None:
            out = self._forward_again(data, fetch)
            if out is not None:
                return out
        if data is not None:
            if not self.input_names:
                raise ModelError(f"{self._where()}: the net declares no input")
            inputs = {self.input_names[0]: data, **inputs}
        if self.phase == "TRAIN":  # backward needs every bottom: nothing may run in place
            keep_pre_activation = True
        i0 = 0 if start is None else self.layer_index(start)
        i1 = len(self.layers) - 1 if end is None else self.layer_index(end)
        if i0 == 0 or start is None:
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise ModelError(f"no array given for input(s) {missing}")
            blobs = OrderedDict()
            shapes = {}
            for n, x in inputs.items():
                if n not in self.input_shapes:
                    raise ModelError(f"{n!r} is not an input of the net (inputs: {self.input_names})")
                x = np.asarray(x)
                self._check_input(n, x)
                # always a private float32 copy: in-place layers must never touch the caller's array
                blobs[n] = np.array(x, dtype=np.float32, order="C", copy=True)
                shapes[n] = blobs[n].shape
            if shapes != {k: self.blob_shapes[k] for k in shapes}:
                self._reshape(shapes)
            # A full pass recomputes every blob: drop the previous pass's now, not when this one
            # ends, so their memory is free for this pass's arrays. Otherwise two passes' worth is
            # live at once and the second pass, too, page-faults fresh memory (CaffeNet at batch
            # 64: ~1 s more for the second forward of a process, and twice the activation memory)
            self.blobs = OrderedDict()
        else:
            blobs = self.blobs
            for n, x in inputs.items():
                blobs[n] = np.array(x, dtype=np.float32, order="C", copy=True)
        backend = self.backend
        if backend == "cuda":
            blobs = OrderedDict((k, v if is_device_array(v) else to_device(v)) for k, v in blobs.items())
            params = {k: [to_device(a) for a in v] for k, v in self.params.items()}
        else:
            params = self.params
        fuse = self.fuse_relu and backend == "cpu" and not keep_pre_activation
        hooks = self._hooks
        steps = self._steps(i0, i1, fetch, fuse, keep_pre_activation)
        prog = self._program(steps, fetch) if i0 == 0 and fetch is not None and fuse and not hooks else None
        if prog is not None:
            blobs.update(prog.run(blobs[self.input_names[0]]))
            if prog.rest == len(steps):
                self.blobs = blobs
                if start is None and end is None and len(inputs) == 1:
                    self._fast = (steps, list(fetch), blobs[self.input_names[0]].shape, prog)
                return OrderedDict((k, blobs[k]) for k in fetch if k in blobs)
            steps = steps[prog.rest:]       # the rest layer by layer, from the program's blobs
        if backend == "cpu":
            from .threads import pool
            pool().keep_numba_workers_off()
        for i, layer, kind, arg in steps:
            for hb, _ in hooks:
                if hb is not None:
                    hb(self, i, layer)
            if kind == _FUSED:          # a ReLU whose work the previous layer did
                tops = [blobs[layer.tops[0]]]
            elif kind == _CHAIN:
                c, lay = arg, self.layers
                ex, pr = c["expand"], c["project"]
                tops = lay[c["dw"]].forward_block(
                    blobs[c["input"]], params[lay[c["dw"]].name], c["act"],
                    expand=None if ex is None else lay[ex], expand_params=None if ex is None else params[lay[ex].name],
                    expand_act=c["expand_act"], project=None if pr is None else lay[pr],
                    project_params=None if pr is None else params[lay[pr].name], residual=c["residual"])
                blobs[layer.tops[0]] = tops[0]
            else:
                inplace, extra, pre = arg
                bottoms = [blobs[b] for b in layer.bottoms]
                if pre is not None and pre not in blobs:
                    blobs[pre] = bottoms[0]
                try:
                    tops = layer.forward(bottoms, params.get(layer.name, []), backend, inplace=inplace, **extra)
                except MinicaffeError:
                    raise
                except (ValueError, IndexError) as e:
                    raise layer.err(f"forward failed on inputs {[tuple(b.shape) for b in bottoms]}: {e}") from e
                for t, arr in zip(layer.tops, tops):
                    blobs[t] = arr
            for _, ha in hooks:
                if ha is not None:
                    ha(self, i, layer, tops)
        if backend == "cuda":
            synchronize(backend)
            names = list(blobs) if fetch is None else list(fetch)
            host = OrderedDict((k, to_host(blobs[k])) for k in names if k in blobs)
            self.blobs = host
            return OrderedDict(host)
        self.blobs = blobs
        if fetch is not None:
            return OrderedDict((k, blobs[k]) for k in fetch if k in blobs)
        return OrderedDict(blobs)

    def _steps(self, i0, i1, fetch, fuse, keep_pre_activation):
        """The layers :meth:`forward` runs for layers i0..i1, decided once per set of blob shapes,
        range, fetch list and options: (index, layer, kind, arg) with kind _LAYER (arg: inplace,
        the fused-activation / layout keywords, the ``.pre`` blob to keep or None), _CHAIN (arg:
        the chain, :meth:`_block_plan`; its other members are not listed) or _FUSED (a ReLU whose
        work the previous layer did; listed only while hooks are attached, for their calls)."""
        hooks = bool(self._hooks)
        key = (self._shapes_token, i0, i1, None if fetch is None else frozenset(fetch), fuse, self.channels_last,
               keep_pre_activation, hooks)
        cached = getattr(self, "_steps_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        layout = self._channels_last_plan() if fuse and self.channels_last else ()
        # inverted-residual chains run as one kernel: final layer index -> chain, and the layers
        # that then do nothing
        chains = self._block_plan(i0, i1, fetch) if fuse and self.channels_last and fetch is not None and not hooks \
            else {}
        skipped = {k for c in chains.values() for k in c["members"][:-1]}
        steps, aliased, fused = [], set(), -1
        for i in range(i0, i1 + 1):
            layer = self.layers[i]
            if layer.type == "Input" or i in skipped:
                continue
            if i == fused:
                if hooks:
                    steps.append((i, layer, _FUSED, None))
                continue
            if i in chains:
                steps.append((i, layer, _CHAIN, chains[i]))
                continue
            inplace = layer.inplace and layer.can_run_inplace
            pre = None
            if inplace and keep_pre_activation:
                pre = layer.tops[0] + PRE_SUFFIX
                inplace = False
            if inplace and layer.bottoms[0] in aliased:
                inplace = False
            extra = {}
            if fuse and layer.fuses_relu and i < i1 and len(layer.tops) == 1:
                act = _fusable_activation(self.layers[i + 1], layer.tops[0])
                if act is not None:
                    extra, fused = dict(act), i + 1
            if i in layout:
                extra["channels_last"] = True
            steps.append((i, layer, _LAYER, (inplace, extra, pre)))
            if layer.type in _ALIASING_TYPES and not layer.inplace:
                aliased.update((*layer.tops, *layer.bottoms))
        self._steps_cache = (key, steps)
        return steps

    def _forward_again(self, data, fetch):
        """The forward of :meth:`forward` when it repeats the last whole-net program forward: the
        same fetch list, input shape and planned steps, no hooks, and the program still valid
        (:meth:`_program`) -> its blobs, or None (then the full path runs). After an idle pause
        every Python operation of a forward misses the caches: this path runs few of them."""
        # (a new set of blob shapes, freeze() and freeze(False) drop the record: _reshape, freeze)
        steps, fetch_list, shape, prog = self._fast
        if (self._hooks or type(data) is not np.ndarray or data.shape != shape
                or (fetch is not fetch_list and list(fetch) != fetch_list) or not self.fuse_relu
                or self.backend != "cpu" or self._program(steps, fetch) is not prog):
            return None
        # always a private float32 copy: the net's blob, never the caller's array
        x = np.array(data, dtype=np.float32, order="C", copy=True)
        out = prog.run(x)
        self.blobs = blobs = OrderedDict(((self.input_names[0], x),))
        blobs.update(out)
        return OrderedDict((k, out[k]) for k in fetch_list)

    def _program(self, steps, fetch):
        """The forward as one executor program (:mod:`minicaffe.program`) for these steps, or None:
        built once per steps, calling thread and thread count when every weight is frozen and every
        step is a kernel it runs (:data:`PROGRAMS` False: never)."""
        if not self.channels_last or self.phase == "TRAIN" or not PROGRAMS:
            return None
        thread, threads = threading.get_ident(), numba.get_num_threads()
        last = self.__dict__.get("_last_program")
        # the last forward's program when nothing it depends on changed: the same steps object (they
        # are rebuilt when their key changes), thread, thread count and weight arrays, all still
        # read-only (iterated in C: map / chain, no Python loop over ~130 arrays)
        if last is not None and last[0] is steps and last[1] == thread and last[2] == threads:
            flat = last[3]
            n = sum(map(len, self.params.values()))
            if n == len(flat) and all(map(operator.is_, chain.from_iterable(self.params.values()), flat)) \
                    and not any(map(_WRITEABLE, flat)):
                return last[4]
        flat = [a for blobs in self.params.values() for a in blobs]
        if any(a.flags.writeable for a in flat):
            return None
        from . import program
        # the steps' own key (shapes, range, fetch, options): steps are rebuilt only when it changes
        key = (self._steps_cache[0], thread, threads, tuple(map(id, flat)))
        cache = self.__dict__.setdefault("_programs", {})
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = program.build(self, steps, fetch)
        self._last_program = (steps, thread, threads, flat, cache[key])
        return cache[key]

    def _readers(self):
        """Blob name -> the set of indices of the layers that read it (the layer plans' common
        input; the layer list does not change after construction)."""
        if getattr(self, "_readers_map", None) is None:
            readers = {}
            for j, layer in enumerate(self.layers):
                for b in set(layer.bottoms):
                    readers.setdefault(b, set()).add(j)
            self._readers_map = readers
        return self._readers_map

    def _channels_last_plan(self):
        """Indices of the layers that write their top channels last: producers that can
        (``writes_channels_last``) whose top has readers, every one of which reads that layout in
        place. Computed once per set of blob shapes."""
        key = self._shapes_token
        if getattr(self, "_layout_key", None) == key:
            return self._layout
        readers = self._readers()
        plan = set()
        for i, layer in enumerate(self.layers):
            if not layer.writes_channels_last or len(layer.tops) != 1:
                continue
            rs = [self.layers[j] for j in sorted(readers.get(layer.tops[0], ())) if j != i]
            if rs and all(r.reads_channels_last([self.blob_shapes[b] for b in r.bottoms]) for r in rs):
                plan.add(i)
        self._layout_key, self._layout = key, frozenset(plan)
        return self._layout

    def _block_plan(self, i0, i1, fetch):
        """{index of a chain's last layer: chain} for the inverted-residual chains :meth:`forward`
        runs as one kernel: [1x1 Convolution + in-place ReLU/Clip] -> depthwise Convolution [+
        in-place ReLU/Clip] -> [1x1 Convolution] [-> Eltwise SUM with the chain's input], at
        least one 1x1, each intermediate blob read by the next layer of the chain only and not in
        ``fetch``, and the depthwise layer able to run it (:meth:`Convolution.block_fuses`). A
        chain: members (indices, in order), input (blob), expand / dw / project (indices or None),
        expand_act / act (the fused activations), residual."""
        fetch = frozenset(fetch)
        key = (self._shapes_token, i0, i1, fetch)
        if getattr(self, "_chains_key", None) == key:
            return self._chains
        lay = self.layers
        readers = self._readers()

        def only_read_by(blob, idx):
            return blob not in fetch and readers.get(blob, set()) == set(idx)

        def conv(j):
            return i0 <= j <= i1 and lay[j].type == "Convolution" and len(lay[j].tops) == 1 and len(lay[j].bottoms) == 1

        def act_of(j):
            if j + 1 <= i1:
                return _fusable_activation(lay[j + 1], lay[j].tops[0])
            return None

        chains, used = {}, set()
        for d in range(i0, i1 + 1):
            if not conv(d) or lay[d].group != lay[d].num_output or d in used:
                continue
            dw = lay[d]
            act = act_of(d)
            last = d + 1 if act is not None else d
            members = [d] + ([d + 1] if act is not None else [])
            e = expand_act = None
            for k in (d - 2, d - 1):
                if conv(k) and lay[k].tops == dw.bottoms and k not in used and lay[k].group == 1 and \
                        tuple(lay[k].kernel) == tuple(lay[k].stride) == (1, 1) and not any(lay[k].pad):
                    a = act_of(k) if k == d - 2 else None
                    if (k == d - 2) != (a is not None):
                        continue
                    if only_read_by(lay[k].tops[0], [d] + ([d - 1] if a is not None else [])):
                        e, expand_act = k, a or {}
            src = lay[e].bottoms[0] if e is not None else dw.bottoms[0]
            p = last + 1
            project = None
            if conv(p) and lay[p].bottoms == [dw.tops[0]] and only_read_by(dw.tops[0], members[1:] + [p]):
                project = p
            residual = False
            if project is not None:
                r, top = p + 1, lay[p].tops[0]
                if (r <= i1 and lay[r].type == "Eltwise" and getattr(lay[r], "op", None) == 1
                        and not (lay[r].coeffs and any(c != 1.0 for c in lay[r].coeffs))
                        and sorted(lay[r].bottoms) == sorted([src, top]) and src != top
                        and lay[r].tops[0] not in lay[r].bottoms and only_read_by(top, [r])):
                    residual = True
            if e is None and project is None:
                continue
            if not dw.block_fuses(None if e is None else lay[e], None if project is None else lay[project],
                                  self.blob_shapes[src], residual):
                continue
            members = ([e] + ([e + 1] if expand_act else []) if e is not None else []) + members
            members += ([project] if project is not None else []) + ([project + 1] if residual else [])
            chains[members[-1]] = {"members": members, "input": src, "expand": e, "expand_act": expand_act or {},
                                   "dw": d, "act": act or {}, "project": project, "residual": residual}
            used.update(members)
        self._chains_key, self._chains = key, chains
        return chains

    # ------------------------------------------------------------------ training
    def set_phase(self, phase: str, seed: int = 0) -> None:
        """"TRAIN" (Dropout draws seeded masks; forwards are recorded for backward) or "TEST"."""
        from .train import set_phase
        set_phase(self, phase, seed)

    def backward(self, top_diffs: Mapping[str, np.ndarray] | None = None, end: str | None = None):
        """Gradients of the last TRAIN forward; see :func:`minicaffe.train.backward`."""
        from .train import backward
        return backward(self, top_diffs, end=end)

    def _reshape(self, shapes):
        full = dict(self.input_shapes)
        full.update(shapes)
        try:
            new = self._infer_shapes(full)
        except ModelError as e:
            raise ModelError(f"input shape {[tuple(s) for s in shapes.values()]} does not fit the net: {e}") from None
        for layer in self.layers:
            if layer.name in self.params:
                for i, (a, shp) in enumerate(zip(self.params[layer.name], layer.param_shapes)):
                    if tuple(a.shape) != tuple(shp):
                        # undo: restore the shapes of the declared input before reporting
                        self._infer_shapes(self.input_shapes)
                        raise ModelError(
                            f"input shape {[tuple(s) for s in shapes.values()]} does not fit the net: layer "
                            f"{layer.name!r} would need parameter {i} of shape {tuple(shp)}, the weights are "
                            f"{tuple(a.shape)}")
        self.blob_shapes = new
        self._shapes_token = object()
        self._fast = None        # the repeated-forward path is for the previous shapes

    def summary(self):
        """Rows of (layer name, type, top shapes, parameter shapes)."""
        rows = []
        for layer in self.layers:
            rows.append((layer.name, layer.type, [self.blob_shapes[t] for t in layer.tops],
                         [tuple(s) for s in layer.param_shapes]))
        return rows


