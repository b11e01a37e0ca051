"""What a prediction or a feature unit responds to: the library under ``python -m minicaffe.explain``
(:mod:`minicaffe.tools.explain`).

For one input: **saliency** (Simonyan et al. 2014: the gradient of a class score, or of a chosen
unit's spatial-mean activation, w.r.t. the input pixels, through the engine's own backward pass;
the map is the largest absolute gradient over the three colour channels; SmoothGrad averages it
over noisy copies), **occlusion** sensitivity (Zeiler & Fergus 2014: a gray or zero patch slides
over the input and every occluded copy goes through a batched forward; the map is the score drop,
a check that needs no gradients), and :func:`salient_vs_random`: occluding the most salient region
must lower the class score more than occluding a random region of the same size. For a features
file written by ``python -m minicaffe.extract`` (HDF5 or .npz, with ``paths``): per-unit activation
statistics of a layer (:func:`unit_statistics`: mean, std, sparsity = fraction of values <= 0,
max) and one unit's value per image (:func:`unit_values`), both read a block of rows at a time.
The ``save_*`` functions draw the PNGs, :class:`Manifest` records them in ``OUTDIR/manifest.json``
and :func:`manifest_report` lays that out as one HTML page. It does not implement other
attribution methods (integrated gradients, Grad-CAM), works on the numpy and cpu backends only
(backward has no CUDA kernels), parses no arguments and prints nothing.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np

from . import __version__
from .errors import MinicaffeError, MinicaffeWarning, ModelError, UsageError

#: the manifest's format tag; bump when its keys change meaning
MANIFEST_FORMAT = "minicaffe-explain/1"


# ------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """What is explained: ``blob[:, index]`` of a score vector (a class), or the spatial mean of
    channel ``index`` of any blob (a unit). ``index`` None means each image's top-1 class."""
    blob: str
    index: int | None = None
    kind: str = "class"            # "class" or "unit"

    def describe(self, class_names=None):
        if self.kind == "unit":
            return f"unit {self.blob}:{self.index}"
        if self.index is not None and class_names is not None and 0 <= self.index < len(class_names):
            return f"class {self.index} ({class_names[self.index].split(',')[0]})"
        return f"class {self.index}"


def logits_blob(net, aliases=None):
    """The blob of unnormalised class scores: the ``logits`` alias, else the bottom of the last
    Softmax layer, else the last layer's top."""
    if aliases and aliases.get("logits") in net.blob_shapes:
        return aliases["logits"]
    for layer in reversed(net.layers):
        if layer.type == "Softmax":
            return layer.bottoms[0]
    return net.layers[-1].tops[0]


def resolve_blob(net, name, aliases=None):
    """A blob name or alias (decaf7) -> the net's blob name; one clear error otherwise."""
    blob = (aliases or {}).get(name, name)
    if blob not in net.blob_shapes:
        known = [b for b in net.blob_shapes if b not in net.input_names]
        raise ModelError(f"{net.prototxt_path or net.name}: no blob named {name!r} "
                         f"(blobs: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})")
    return blob


def parse_unit(text, net, aliases=None):
    """``"LAYER:CHANNEL"`` -> unit :class:`Target`, checked against the blob's channel count."""
    if ":" not in text:
        raise UsageError(f"--unit must be LAYER:CHANNEL (e.g. fc7:12), got {text!r}")
    name, ch = text.rsplit(":", 1)
    try:
        ch = int(ch)
    except ValueError:
        raise UsageError(f"--unit {text!r}: the channel must be an integer") from None
    blob = resolve_blob(net, name, aliases)
    C = net.blob_shapes[blob][1]
    if not 0 <= ch < C:
        raise UsageError(f"--unit {text!r}: blob {blob!r} has {C} channels (0..{C - 1})")
    return Target(blob, ch, "unit")


def target_scores(value, target, classes):
    """value: the target blob (N, C, ...) ; classes: (N,) int -> scores (N,) float64 and the
    seed ``d score / d value`` (same shape as value)."""
    N, C = value.shape[0], value.shape[1]
    v = np.asarray(value, np.float64).reshape(N, C, -1)
    d = np.zeros(v.shape, np.float32)
    rows = np.arange(N)
    if target.kind == "unit":
        P = v.shape[2]
        scores = v[rows, classes].mean(axis=1)
        d[rows, classes] = np.float32(1.0 / P)   # the unit's score is its spatial mean
    else:
        scores = v[rows, classes].sum(axis=1)
        d[rows, classes] = 1.0
    return scores, d.reshape(value.shape)


def classes_for(value, target):
    """value: the target blob (N, C, ...) -> (N,) the class or channel each image is explained for:
    ``target.index``, or each image's top-1 (by the spatial sum) when that is None."""
    N = value.shape[0]
    if target.index is not None:
        return np.full(N, target.index, np.int64)
    return np.asarray(value, np.float64).reshape(N, value.shape[1], -1).sum(axis=2).argmax(axis=1)


def input_gradient(net, x, target):
    """x: (N, C, H, W) -> (scores (N,), classes (N,), d score / d x (N, C, H, W) float32).

    One TRAIN-phase forward (Dropout kept at its TEST behaviour, so the deployed net is explained)
    and one backward seeded at the target blob; the net is back in the TEST phase afterwards.
    """
    from .train import forward
    net.set_phase("TRAIN")
    try:
        for layer in net.layers:
            if layer.type == "Dropout":
                layer.phase = "TEST"
        value = forward(net, x)[target.blob]
        classes = classes_for(value, target)
        scores, seed = target_scores(value, target, classes)
        g = net.backward({target.blob: seed})[net.input_names[0]]
    finally:
        net.set_phase("TEST")
    return scores, classes, np.asarray(g, np.float32)


def saliency_map(grad):
    """grad: (N, C, H, W) -> (N, H, W): max over channels of |grad| (Simonyan et al.)."""
    return np.abs(grad).max(axis=1)


def saliency(net, x, target, smooth=16, noise=0.15, seed=0, batch=8):
    """x: (C, H, W) one input -> (score, class or channel, saliency (H, W), gradient (C, H, W)).

    ``smooth`` 0: the plain gradient at x. ``smooth`` n > 0: SmoothGrad (Smilkov et al. 2017),
    the mean gradient over n copies of x plus Gaussian noise of standard deviation ``noise``
    times x's value range (drawn from ``numpy.random.default_rng(seed)``), for the class of the
    clean image, ``batch`` noisy copies per backward (a TRAIN-phase forward keeps every layer's
    input, so memory grows with it); the plain gradient of a ReLU6 net is dominated by which
    units sit at a kink.
    """
    score, cls, g = input_gradient(net, x[None], target)
    if smooth <= 0:
        return float(score[0]), int(cls[0]), saliency_map(g)[0], g[0]
    t = Target(target.blob, int(cls[0]), target.kind)
    rng = np.random.default_rng(seed)
    sigma = noise * float(x.max() - x.min())
    acc = np.zeros(x.shape, np.float64)
    for b0 in range(0, smooth, batch):
        k = min(batch, smooth - b0)
        xs = x[None] + (rng.standard_normal((k,) + x.shape) * sigma).astype(np.float32)
        acc += input_gradient(net, xs, t)[2].sum(axis=0, dtype=np.float64)
    g = (acc / smooth).astype(np.float32)
    return float(score[0]), int(cls[0]), saliency_map(g[None])[0], g


def forward_scores(net, x, target, classes, batch=16):
    """x: (M, C, H, W), classes: (M,) -> the target scores (M,) from TEST-phase forwards in
    batches of ``batch`` (the net runs only up to the layer that writes the target blob)."""
    end = None
    for layer in net.layers:
        if target.blob in layer.tops:
            end = layer.name   # the last writer: in-place ReLU after a conv counts
    out = np.empty(len(x), np.float64)
    for b0 in range(0, len(x), batch):
        v = net.forward(x[b0:b0 + batch], end=end, fetch=[target.blob])[target.blob]
        out[b0:b0 + batch] = target_scores(v, target, classes[b0:b0 + batch])[0]
    return out


# ------------------------------------------------------------------------------- occlusion
def fill_values(prep, fill="gray"):
    """The occluder's value per input channel (3,) in the net's units: ``gray`` is pixel level
    128 after the model's preprocessing, ``zero`` is 0 in input units (the dataset mean for
    mean-subtracted Caffe models)."""
    if fill == "zero":
        return np.zeros(3, np.float32)
    if fill != "gray":
        raise UsageError(f"--fill must be gray or zero, got {fill!r}")
    from .attacks import input_bounds
    unit, lo, _ = input_bounds(prep)
    return (lo + 128.0 * unit).astype(np.float32)


def occlude(x, boxes, value):
    """x: (C, H, W), boxes: [(y0, x0, h, w)], value: (C,) -> (len(boxes), C, H, W) copies."""
    out = np.repeat(x[None], len(boxes), axis=0)
    v = np.asarray(value, np.float32).reshape(-1, 1, 1)
    for k, (y0, x0, h, w) in enumerate(boxes):
        out[k, :, y0:y0 + h, x0:x0 + w] = v
    return out


def occlusion_boxes(H, W, patch, stride):
    """-> (boxes [(y0, x0, patch, patch)], grid shape (gh, gw)); the last row/column of patches
    is moved flush with the border so the whole image is covered."""
    if patch < 1 or stride < 1 or patch > min(H, W):
        raise UsageError(f"patch {patch} / stride {stride} do not fit an input of {H}x{W}")
    ys = list(range(0, H - patch + 1, stride))
    xs = list(range(0, W - patch + 1, stride))
    if ys[-1] != H - patch:
        ys.append(H - patch)
    if xs[-1] != W - patch:
        xs.append(W - patch)
    return [(y, x, patch, patch) for y in ys for x in xs], (len(ys), len(xs))


def occlusion_map(net, x, target, cls, prep, patch=32, stride=16, fill="gray", batch=16):
    """x: (C, H, W) one input -> (base score, drop map (H, W) float32, grid (gh, gw) of drops).

    The drop map averages, per pixel, the score drops of every patch that covered it.
    """
    H, W = x.shape[1:]
    boxes, (gh, gw) = occlusion_boxes(H, W, patch, stride)
    base = forward_scores(net, x[None], target, np.array([cls]))[0]
    value = fill_values(prep, fill)
    drops = np.empty(len(boxes), np.float64)
    for b0 in range(0, len(boxes), batch):
        chunk = boxes[b0:b0 + batch]
        xs = occlude(x, chunk, value)
        drops[b0:b0 + len(chunk)] = base - forward_scores(net, xs, target, np.full(len(chunk), cls), batch)
    acc = np.zeros((H, W), np.float64)
    cnt = np.zeros((H, W), np.float64)
    for d, (y0, x0, h, w) in zip(drops, boxes):
        acc[y0:y0 + h, x0:x0 + w] += d
        cnt[y0:y0 + h, x0:x0 + w] += 1
    return base, (acc / np.maximum(cnt, 1)).astype(np.float32), drops.reshape(gh, gw)


def most_salient_box(sal, patch):
    """sal: (H, W) -> (y0, x0) of the ``patch`` x ``patch`` window with the largest summed
    saliency (an integral image; the first such window on ties)."""
    H, W = sal.shape
    ii = np.zeros((H + 1, W + 1), np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(np.asarray(sal, np.float64), axis=0), axis=1)
    s = ii[patch:, patch:] - ii[:-patch, patch:] - ii[patch:, :-patch] + ii[:-patch, :-patch]
    y0, x0 = np.unravel_index(int(np.argmax(s)), s.shape)
    return int(y0), int(x0)


def salient_vs_random(net, x, target, prep, patch=56, n_random=8, seed=0, fill="gray", smooth=16, noise=0.15,
                      batch=8):
    """x: (N, C, H, W) -> per image dict: class, base score, the drop when the most salient
    ``patch`` x ``patch`` region (by :func:`saliency` with ``smooth``/``noise``) is occluded, and
    the drops for ``n_random`` random regions of the same size (positions from
    ``numpy.random.default_rng(seed)``, drawn image by image)."""
    rng = np.random.default_rng(seed)
    value = fill_values(prep, fill)
    rows = []
    for i in range(len(x)):
        base, cls, sal, _ = saliency(net, x[i], target, smooth, noise, seed, batch)
        H, W = sal.shape
        y0, x0 = most_salient_box(sal, patch)
        boxes = [(y0, x0, patch, patch)]
        boxes += [(int(rng.integers(0, H - patch + 1)), int(rng.integers(0, W - patch + 1)), patch, patch)
                  for _ in range(n_random)]
        scores = forward_scores(net, occlude(x[i], boxes, value), target, np.full(len(boxes), cls), batch)
        drops = base - scores
        rows.append({"class": cls, "score": base, "salient_box": boxes[0],
                     "salient_drop": float(drops[0]), "random_drops": [float(d) for d in drops[1:]],
                     "saliency": sal})
    return rows


# ------------------------------------------------------------------------------- images
def sample_photos():
    """-> (names, (H, W, 3) uint8 RGB arrays): real photos shipped with scikit-image and
    scikit-learn (the grayscale ones repeated to three channels)."""
    from .attacks import sample_photos as colour
    names, imgs = colour()
    import skimage.data as sd
    extra = [("motorcycle", lambda: sd.stereo_motorcycle()[0])]
    extra += [(n, getattr(sd, n)) for n in ("camera", "clock", "coins") if hasattr(sd, n)]
    for n, f in extra:
        try:
            im = np.asarray(f())
        except Exception as e:  # noqa: BLE001 - a sample missing from this scikit-image build
            warnings.warn(f"skipping scikit-image sample {n!r}: {e}", MinicaffeWarning, stacklevel=2)
            continue
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)   # gray -> RGB
        names.append(n)
        imgs.append(np.ascontiguousarray(im[:, :, :3]))
    return names, imgs


def load_inputs(sources, prep, on_error=None):
    """Paths or arrays -> (kept indices, net inputs (N, 3, c, c), display crops (N, c, c, 3) uint8
    RGB). An image that cannot be read is skipped after ``on_error(source, error)``."""
    from .preprocess import load_resized, normalize_batch
    keep, xs, shows = [], [], []
    for i, s in enumerate(sources):
        try:
            rgb = load_resized(s, prep)
            xs.append(normalize_batch([rgb], prep, "center")[0])
        except MinicaffeError as e:
            if on_error is None:
                raise
            on_error(s, e)
            continue
        y0, x0 = (rgb.shape[0] - prep.crop) // 2, (rgb.shape[1] - prep.crop) // 2   # the center crop's corner
        shows.append(rgb[y0:y0 + prep.crop, x0:x0 + prep.crop])
        keep.append(i)
    if not xs:
        return keep, np.empty((0, 3, prep.crop, prep.crop), np.float32), []
    return keep, np.stack(xs), shows


# ------------------------------------------------------------------------------- features file
def open_features(path, layer):
    """-> (matrix (N, D) h5py dataset or ndarray, blob shape tuple, paths list, closer).

    ``layer`` is the blob name as extract stored it ('/' may be given, it is stored as '__')."""
    key = layer.replace("/", "__")
    p = str(path)
    if not os.path.isfile(p):
        raise UsageError(f"{p}: no such features file")
    if p.lower().endswith(".npz"):
        try:
            z = np.load(p)
        except (OSError, ValueError) as e:
            raise UsageError(f"{p}: not a readable .npz features file ({e})") from None
        names = [k.split("/", 1)[1] for k in z.files if k.startswith("features/")]
        if f"features/{key}" not in z.files:
            raise UsageError(f"{p}: no features for layer {layer!r} (layers: {', '.join(names)})")
        X = z[f"features/{key}"]
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        shp = tuple(meta.get("layer_info", {}).get(key, {}).get("shape", (X.shape[1],)))
        paths = [str(s) for s in z["paths"]] if "paths" in z.files else [str(i) for i in range(len(X))]
        return X, shp, paths, z.close
    import h5py
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise UsageError(f"{p}: not a readable HDF5 features file ({e})") from None
    if "features" not in f or key not in f["features"]:
        have = ", ".join(f["features"]) if "features" in f else "none"
        f.close()
        raise UsageError(f"{p}: no features for layer {layer!r} (layers: {have})")
    ds = f["features"][key]
    if ds.ndim != 2:
        f.close()
        raise UsageError(f"{p}: features/{key} is {ds.ndim}-D, expected (N, D)")
    shp = tuple(int(d) for d in ds.attrs.get("shape", (ds.shape[1],)))
    paths = list(f["paths"].asstr()[()]) if "paths" in f else [str(i) for i in range(ds.shape[0])]
    return ds, shp, paths, f.close


def _row_blocks(n_rows, row_bytes, block_bytes=64 << 20):
    step = max(1, block_bytes // max(row_bytes, 1))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


def unit_values(X, shape, unit, reduce="max", block_bytes=64 << 20):
    """X: (N, D) with rows of a blob of ``shape`` (C,) or (C, H, W) flattened in C order -> the
    unit's value per image (N,): the column for an fc blob, the channel's spatial ``max`` or
    ``mean`` for a conv blob. Reads only that channel's columns, a block of rows at a time."""
    C = shape[0]
    P = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if C * P != X.shape[1]:
        raise UsageError(f"features have {X.shape[1]} columns but the blob shape {shape} has {C * P}")
    if not 0 <= unit < C:
        raise UsageError(f"unit {unit} is outside the layer's {C} channels (0..{C - 1})")
    out = np.empty(X.shape[0], np.float64)
    for r0, r1 in _row_blocks(X.shape[0], 4 * P, block_bytes):
        v = np.asarray(X[r0:r1, unit * P:(unit + 1) * P], np.float64)
        out[r0:r1] = v.max(axis=1) if reduce == "max" else v.mean(axis=1)
    return out


def unit_statistics(X, shape, block_bytes=64 << 20):
    """X: (N, D) -> per channel (C,) arrays mean, std, sparsity (fraction <= 0), max, over images
    and spatial positions; rows read a block at a time, merged with Chan et al.'s pairwise
    update, so a file larger than memory is fine."""
    C = shape[0]
    P = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if C * P != X.shape[1]:
        raise UsageError(f"features have {X.shape[1]} columns but the blob shape {shape} has {C * P}")
    n = 0
    mean = np.zeros(C)
    m2 = np.zeros(C)
    nonpos = np.zeros(C)
    mx = np.full(C, -np.inf)
    for r0, r1 in _row_blocks(X.shape[0], 4 * X.shape[1], block_bytes):
        v = np.asarray(X[r0:r1], np.float64).reshape(r1 - r0, C, P).transpose(1, 0, 2).reshape(C, -1)
        k = v.shape[1]
        bm = v.mean(axis=1)
        bm2 = ((v - bm[:, None]) ** 2).sum(axis=1)
        delta = bm - mean
        tot = n + k
        mean = mean + delta * (k / tot)
        m2 = m2 + bm2 + delta ** 2 * (n * k / tot)
        n = tot
        nonpos += (v <= 0).sum(axis=1)
        mx = np.maximum(mx, v.max(axis=1))
    if n == 0:
        raise UsageError("the features file has no rows")
    return {"mean": mean, "std": np.sqrt(m2 / n), "sparsity": nonpos / n, "max": mx}


# ------------------------------------------------------------------------------- manifest
class Manifest:
    """``OUTDIR/manifest.json``: what an explain run made, for a report to lay out.

    Format (``"format": "minicaffe-explain/1"``)::

        {"format": ..., "tool": "minicaffe.explain", "minicaffe_version": ..., "updated": ISO time,
         "items": [{"image": "chelsea_saliency.png",   # PNG, relative to the manifest's folder
                    "caption": "chelsea: saliency of class 285 (Egyptian cat)",
                    "numbers": {"score": 9.1, ...},      # flat name -> number
                    "command": "saliency", "source": "chelsea", "model": "efficientnet-lite0",
                    "tables": ["units_fc7_stats.csv"]}, # optional CSVs beside the PNG
                   ...]}

    A later run into the same folder keeps the earlier items and replaces those with the same
    ``image``, so several commands can fill one page.
    """

    def __init__(self, outdir):
        self.outdir = pathlib.Path(outdir)
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{outdir}: cannot create the output folder ({e})") from None
        self.path = self.outdir / "manifest.json"
        self.items = []
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
                if old.get("format") == MANIFEST_FORMAT:
                    self.items = list(old.get("items", []))
            except (OSError, ValueError):
                self.items = []   # an unreadable old manifest is replaced, not an error

    def add(self, image, caption, numbers, **extra):
        item = {"image": str(image), "caption": caption,
                "numbers": {k: _num(v) for k, v in numbers.items()}, **extra}
        self.items = [it for it in self.items if it.get("image") != item["image"]] + [item]
        return item

    def write(self):
        doc = {"format": MANIFEST_FORMAT, "tool": "minicaffe.explain", "minicaffe_version": __version__,
               "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "items": self.items}
        tmp = self.path.with_name(f"manifest.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)
        return self.path


def _num(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return round(float(v), 6)


# ------------------------------------------------------------------------------- plotting
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _norm01(a):
    a = np.asarray(a, np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _blur(a, sigma):
    """(H, W) -> Gaussian-blurred (H, W), separable, borders padded by reflection."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    a = np.pad(np.asarray(a, np.float64), r, mode="reflect")
    a = np.apply_along_axis(np.convolve, 0, a, k, mode="valid")
    return np.apply_along_axis(np.convolve, 1, a, k, mode="valid")


def save_overlay(path, rgb, heat, title, heat_title, signed=False, box=None):
    """rgb: (H, W, 3) uint8, heat: (H, W) -> PNG of image | heat map | overlay."""
    plt = _plt()
    import textwrap
    # no ticks and a fixed layout: tick and tight-layout bookkeeping cost more than the drawing
    fig, axs = plt.subplots(1, 3, figsize=(9, 3.4), subplot_kw={"xticks": [], "yticks": []})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.08)
    axs[0].imshow(rgb)
    axs[0].set_title("input (center crop)", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    if signed:
        m = float(np.abs(heat).max()) or 1.0
        im = axs[1].imshow(heat, cmap="RdBu_r", vmin=-m, vmax=m)
        over = np.clip(heat, 0, None)
    else:
        # a pixel-level gradient map has a few extreme pixels: the colour scale stops at the 99th
        # percentile, and the overlay shows the map blurred to the scale of image parts
        im = axs[1].imshow(heat, cmap="inferno", vmin=0, vmax=float(np.percentile(heat, 99)) or None)
        over = _blur(heat, sigma=max(heat.shape) / 60)
    fig.colorbar(im, ax=axs[1], fraction=0.046, pad=0.04)
    axs[1].set_title(heat_title, fontsize=8)
    axs[2].imshow(rgb)
    axs[2].imshow(_norm01(over), cmap="jet", alpha=0.45)
    axs[2].set_title("overlay" if signed else "overlay (blurred)", fontsize=8)
    if box is not None:
        from matplotlib.patches import Rectangle
        y0, x0, h, w = box
        axs[2].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, edgecolor="white", lw=1.5))
    for a in axs:
        a.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_grid(path, rgb, maps, channels, title):
    """maps: (K, h, w) activation maps of the listed channels -> PNG grid, each map on its own
    colour scale (its range in the caption is what the numbers mean)."""
    plt = _plt()
    k = len(maps) + 1
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    fig, axs = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.5 * rows + 0.4), squeeze=False,
                            subplot_kw={"xticks": [], "yticks": []})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / (1.5 * rows + 0.4), hspace=0.3, wspace=0.05)
    axs = axs.reshape(-1)
    axs[0].imshow(rgb)
    axs[0].set_title("input", fontsize=6)
    for a, m, c in zip(axs[1:], maps, channels):
        a.imshow(m, cmap="viridis")
        a.set_title(f"ch {c}  max {float(m.max()):.2g}", fontsize=5)
    for a in axs:
        a.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _thumb(path, size=112):
    from PIL import Image

    from .images import load_image
    try:
        im = load_image(path)
    except MinicaffeError:
        return None
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))


def save_top_images(path, paths, values, title, root=None):
    """Thumbnail sheet of the top-activating images, best first; unreadable files show blank."""
    plt = _plt()
    k = len(paths)
    cols = min(k, 8)
    rows = int(np.ceil(k / cols))
    fig, axs = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows + 0.4), squeeze=False,
                            subplot_kw={"xticks": [], "yticks": []})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.4 / (1.7 * rows + 0.4), hspace=0.45, wspace=0.05)
    axs = axs.reshape(-1)
    for a, p, v in zip(axs, paths, values):
        t = _thumb(os.path.join(root, p) if root else p)
        a.imshow(t if t is not None else np.full((8, 8, 3), 200, np.uint8))
        a.set_title(f"{v:.3g}\n{os.path.basename(p)[:18]}" + ("" if t is not None else "\n(unreadable)"),
                    fontsize=6)
    for a in axs:
        a.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_stats_plot(path, stats, title):
    plt = _plt()
    fig, axs = plt.subplots(1, 4, figsize=(12, 2.8))
    for a, key in zip(axs, ("mean", "std", "sparsity", "max")):
        a.plot(np.sort(stats[key])[::-1], lw=1)
        a.set_title(f"{key} per unit (sorted)", fontsize=8)
        a.set_xlabel("unit rank", fontsize=7)
        a.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def manifest_report(manifest_path, html_path, title="minicaffe explain"):
    """Lay out an ``OUTDIR/manifest.json`` (:class:`Manifest`) as one self-contained HTML page:
    each PNG with its caption and numbers, each CSV table beside it (first 50 rows)."""
    import csv

    from . import html_report as report
    mpath = pathlib.Path(manifest_path)
    doc = json.loads(mpath.read_text(encoding="utf-8"))
    sections = []
    for it in doc.get("items", []):
        nums = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in it.get("numbers", {}).items())
        sections.append(report.Figure(mpath.parent / it["image"], caption=nums,
                                      title=it.get("caption") or it["image"]))
        for t in it.get("tables", []) or []:
            with open(mpath.parent / t, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows:
                sections.append(report.Table(rows[0], rows[1:51], title=t,
                                             caption=f"{len(rows) - 1} rows"
                                             + (" (first 50 shown)" if len(rows) > 51 else "")))
    return report.write_html(html_path, title, sections, subtitle=f"{len(doc.get('items', []))} items from {mpath}")
