"""Layer base class, the type-string registry, and small parameter helpers.

A layer is a small unit in Caffe's style: it is constructed from its prototxt ``LayerParameter``,
``setup(bottom_shapes)`` returns the top shapes (and fixes ``param_shapes``), and
``forward(bottoms, params, backend)`` returns the top arrays. Layers are registered by their
Caffe type string (``@register("Convolution")``). Layers hold no timing or capture code: the
net's hooks do that. Layers do not own their parameters; the net passes them in.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError

REGISTRY: dict[str, type] = {}


# Channels-last activations. A blob is always an (N, C, H, W) array to its readers; on the cpu
# backend a layer may return one whose memory is (N, H, W, C) ("channels last", a transposed view),
# so the next layer that works along channel vectors (1x1 and depthwise convolutions, residual
# sums) reads it without a layout change. Any reader that needs NCHW memory gets it from
# np.ascontiguousarray, as for any other view.

def is_channels_last(x):
    """x: (N, C, H, W) -> True when its memory is a C-contiguous (N, H, W, C) array."""
    return (isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[1] > 1
            and x.transpose(0, 2, 3, 1).flags.c_contiguous)


def nhwc_memory(x):
    """x: (N, C, H, W), channels last -> its memory as a C-contiguous (N, H, W, C) array (a view)."""
    return x.transpose(0, 2, 3, 1)


def channels_last_view(y):
    """y: C-contiguous (N, H, W, C) -> the same memory as an (N, C, H, W) blob (a view; NHWC -> NCHW
    axes, no copy)."""
    return y.transpose(0, 3, 1, 2)


def flat_memory(x):
    """x: any array -> (its values as a C-contiguous float32 1-D array in memory order, a function
    that gives a same-size 1-D result x's shape and layout back; given the 1-D array itself, an
    in-place result, it returns x). A channels-last blob is read in place and its results stay
    channels last; anything else is made C-contiguous first."""
    if is_channels_last(x) and x.dtype == np.float32:
        m = nhwc_memory(x)
        flat = m.reshape(-1)
        return flat, lambda f: x if f is flat else channels_last_view(f.reshape(m.shape))
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    return flat, lambda f: x if f is flat else f.reshape(x.shape)


def register(*type_names):
    def deco(cls):
        for t in type_names:
            REGISTRY[t] = cls
        cls.type = type_names[0]
        return cls
    return deco


class Layer:
    type = "?"
    #: layers whose output may overwrite their input when top == bottom (Caffe in-place)
    can_run_inplace = False
    #: layers whose cpu ``forward`` takes ``relu=True`` and applies a following in-place ReLU in
    #: its own output pass (the net then skips the ReLU layer's separate pass over memory)
    fuses_relu = False
    #: layers whose cpu ``forward`` takes ``channels_last=True``: return the top channels last
    #: when that suits every reader (the net decides, see :meth:`reads_channels_last`)
    writes_channels_last = False

    def reads_channels_last(self, bottom_shapes):
        """True when the cpu kernel reads channels-last bottoms of these shapes in place (no copy)
        and keeps the layout for its readers; the net then lets the producer write that layout."""
        return False

    def __init__(self, name, lp, bottoms, tops):
        self.name, self.lp, self.bottoms, self.tops = name, lp, list(bottoms), list(tops)
        self.param_shapes: list[tuple] = []

    @property
    def inplace(self):
        return len(self.bottoms) == 1 and self.bottoms == self.tops[:1]

    def setup(self, bottom_shapes):  # -> list of top shapes
        raise NotImplementedError

    def forward(self, bottoms, params, backend, inplace=False):  # -> list of tops
        raise NotImplementedError

    def backward(self, top_diffs, bottoms, tops, params, backend):
        """-> (bottom diffs, parameter diffs) of the last TRAIN forward, each a list in the order of
        ``bottoms`` / ``params``. Layer types that train override it; the rest have no backward."""
        raise self.err(f"has no backward pass (the {self.type} layer cannot be trained through)")

    def backend_kernel(self, backend, what="forward", **kernels):
        """The function for ``backend`` among ``kernels`` (``numpy=``, ``cpu=``, ``cuda=``): the one
        per-backend dispatch of every layer's forward and backward; a backend the layer lacks is a
        clear error, never a fallback."""
        f = kernels.get(backend)
        if f is None:
            raise self.err(f"has no {what} on the {backend} backend (it has: {', '.join(sorted(kernels))})")
        return f

    def flops(self, bottom_shapes, top_shapes) -> int:
        """Floating-point operations of one forward (multiply-add = 2)."""
        return 0

    def init_params(self, rng):
        """Seeded random parameters (He-normal weights, small biases), for timing and tests."""
        import numpy as np
        out = []
        for i, shp in enumerate(self.param_shapes):
            if i == 0 and len(shp) >= 2:
                fan_in = int(np.prod(shp[1:]))
                out.append(normal_float32(rng, shp, np.sqrt(2.0 / max(fan_in, 1))))
            else:
                out.append(normal_float32(rng, shp, 0.01))
        return out

    def err(self, msg):
        return ModelError(f"layer {self.name!r} ({self.type}): {msg}")

    def pget(self, msg_name):
        """The layer's ``<type>_param`` sub-message (an empty one when absent)."""
        from ..io.prototxt import Message
        m = self.lp.get(msg_name)
        return m if m is not None else Message()


#: elements drawn per float64 chunk by :func:`normal_float32` (8 MB of scratch)
INIT_CHUNK = 1 << 20


def normal_float32(rng, shape, scale):
    """shape -> float32 array of ``rng.standard_normal * scale``, drawn in float64 chunks.

    The same values as ``(rng.standard_normal(shape) * scale).astype(np.float32)`` (the stream is
    drawn in order), without ever holding the whole array in float64.
    """
    import numpy as np
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)
    for i in range(0, flat.size, INIT_CHUNK):
        n = min(INIT_CHUNK, flat.size - i)
        flat[i:i + n] = rng.standard_normal(n) * scale
    return out


def int_value(layer, name, v, lo=None):
    """A parameter that must be an integer (``dilation: 1.5`` is refused, not truncated)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise layer.err(f"{name} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise layer.err(f"{name} must be >= {lo}, got {v}")
    return v


def float_value(layer, name, v):
    """A parameter that must be a (finite) number."""
    import math
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise layer.err(f"{name} must be a finite number, got {v!r}")
    return float(v)


def hw_param(layer, p, name, default=None, required=False):
    """Caffe's ``kernel_size``/``kernel_h``+``kernel_w`` convention -> (h, w)."""
    hv, wv = p.get(name + "_h"), p.get(name + "_w")
    vals = p.getall(name + ("_size" if name == "kernel" else ""))
    if hv is not None or wv is not None:
        if hv is None or wv is None:
            raise layer.err(f"both {name}_h and {name}_w must be given")
        if vals:
            raise layer.err(f"give either {name}{'_size' if name == 'kernel' else ''} or {name}_h/{name}_w, not both")
        out = (hv, wv)
    elif len(vals) == 0:
        if required:
            raise layer.err(f"{name}{'_size' if name == 'kernel' else ''} is required")
        out = (default, default)
    elif len(vals) == 1:
        out = (vals[0], vals[0])
    elif len(vals) == 2:
        out = (vals[0], vals[1])
    else:
        raise layer.err(f"{name} given {len(vals)} times; 2-D layers take 1 or 2 values")
    for v in out:
        if not isinstance(v, int) or v < 0:
            raise layer.err(f"{name} must be a non-negative integer, got {v!r}")
    return out


def as_bool(v, default):
    if v is None:
        return default
    if isinstance(v, str):
        if v.lower() in ("true", "1"):
            return True
        if v.lower() in ("false", "0"):
            return False
    if isinstance(v, int):
        return bool(v)
    raise ModelError(f"expected true/false, got {v!r}")
