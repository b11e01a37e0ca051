"""Every activation of minicaffe against a reference framework, blob by blob: the library under
``python -m minicaffe.check`` (:mod:`minicaffe.tools.check`).

:func:`run_check` runs minicaffe on an input ``x: (N, C, H, W)`` and each named reference
(``caffe-npz:BLOBS.npz``: blobs saved from real Caffe; ``opencv``: OpenCV DNN's Caffe importer;
``torch``: our prototxt -> torch.nn translator; ``pycaffe``: Caffe itself; see
:func:`minicaffe.reference.reference_blobs`). For every blob the reference has, :func:`compare_blob`
gives a :class:`Row`: shape, max |ref|, max abs error, relative error (max |ours - ref| / max |ref|,
the project-wide measure), the index of the worst element and pass/fail against ``tol`` (a shape
mismatch, a missing blob or a NaN fails). :func:`verdict` is the one-line summary naming the first
blob (in net order) that diverges, :func:`format_table` the readable table. Inputs come from a
``.npy`` (:func:`load_npy`), images through the model's preprocessing (:func:`load_images`), seeded
noise (:func:`random_input`) or the input blob a caffe-npz reference stored (:func:`stored_input`).
It compares values only: it does not time anything, does not decide which of two disagreeing
frameworks is right, parses no arguments and prints nothing.
"""

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import MinicaffeError
from .reference import npz_key, reference_blobs

#: std of ``--random`` inputs: the spread of mean-subtracted 0..255 pixels
RANDOM_SCALE = 50.0


@dataclass
class Row:
    """One compared blob. ``rel`` = max |ours - ref| / max |ref|; ``worst`` indexes that element."""
    blob: str
    shape: list
    max_ref: float
    max_abs: float
    rel: float
    worst: list
    ours_at_worst: float
    ref_at_worst: float
    ok: bool
    note: str = ""


def compare_blob(name, ours, ref, tol):
    """ours, ref: arrays of one blob -> :class:`Row` (a shape mismatch or NaN is a failure)."""
    ref = np.asarray(ref)
    if ours is None:
        return Row(name, list(ref.shape), float(np.abs(ref).max()) if ref.size else 0.0, float("nan"),
                   float("nan"), [], float("nan"), float("nan"), False, "not produced by minicaffe")
    ours = np.asarray(ours)
    if ours.shape != ref.shape:
        return Row(name, list(ref.shape), float(np.abs(ref).max()) if ref.size else 0.0, float("nan"),
                   float("nan"), [], float("nan"), float("nan"), False,
                   f"shape mismatch: minicaffe {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    if ref.size == 0:
        return Row(name, list(ref.shape), 0.0, 0.0, 0.0, [], 0.0, 0.0, True)
    o64, r64 = ours.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(o64 - r64)
    bad = ~np.isfinite(diff)
    flat = int(np.argmax(bad)) if bad.any() else int(np.argmax(diff))
    idx = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_ref = float(np.abs(r64).max())
    max_abs = float("nan") if bad.any() else float(diff.max())
    if max_ref > 0:
        rel = max_abs / max_ref
    else:
        rel = 0.0 if max_abs == 0 else float("inf")
    ok = bool(rel <= tol)   # NaN compares False: a NaN anywhere fails
    note = "non-finite value" if bad.any() else ""
    return Row(name, list(ref.shape), max_ref, max_abs, rel, list(idx), float(o64[idx]), float(r64[idx]), ok, note)


def compare_blobs(ours, ref, tol, order=None):
    """ours: {blob: array} from minicaffe; ref: {blob or npz key: array} -> [Row] in net order.

    Every reference blob gets a row (also when minicaffe lacks it: a failure); minicaffe blobs the
    reference does not have are not compared. npz keys map back with '/' <-> '__'.
    """
    by_key = {npz_key(b): b for b in ours}
    pairs = []
    for key, r in ref.items():
        blob = key if key in ours else by_key.get(key, key)
        pairs.append((blob, r))
    if order is not None:
        rank = {b: i for i, b in enumerate(order)}
        pairs.sort(key=lambda p: rank.get(p[0], len(rank)))
    return [compare_blob(b, ours.get(b), r, tol) for b, r in pairs]


def verdict(rows, against, tol, input_name=None):
    """One line: PASS/FAIL, how many blobs, the worst or the first diverging blob."""
    if not rows:
        return f"FAIL: no blob in common with {against} (nothing was compared)"
    failed = [r for r in rows if not r.ok]
    if not failed:
        w = max(rows, key=lambda r: r.rel)
        return (f"PASS: all {len(rows)} blobs within {tol:g} relative error of {against} "
                f"(worst: {w.blob} {w.rel:.2e})")
    f = failed[0]
    what = f.note or f"rel err {f.rel:.2e} at {tuple(f.worst)}"
    hint = ""
    if f.blob == input_name:
        hint = " - the inputs differ: check preprocessing (channel order BGR/RGB, mean, scale, crop)"
    return (f"FAIL: {len(failed)} of {len(rows)} blobs exceed {tol:g} relative error vs {against}; "
            f"first divergence at blob {f.blob!r} ({what}){hint}")


def format_table(rows):
    head = ("blob", "shape", "max|ref|", "max abs err", "rel err", "worst index", "result")
    body = []
    for r in rows:
        body.append((r.blob, "x".join(str(d) for d in r.shape), f"{r.max_ref:.4g}", f"{r.max_abs:.3e}",
                     f"{r.rel:.3e}", str(tuple(r.worst)) if r.worst else "-",
                     ("PASS" if r.ok else "FAIL") + (f" ({r.note})" if r.note else "")))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- inputs
def load_npy(path):
    """A preprocessed input array (.npy, (N, C, H, W) or (C, H, W)) -> (N, C, H, W) float32."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MinicaffeError(f"{path}: cannot read the input array (.npy expected): {e}") from None
    if x.ndim == 3:
        x = x[None]          # (C, H, W) -> a batch of one
    if x.ndim != 4:
        raise MinicaffeError(f"{path}: input must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_images(paths, crop, spec=None):
    """Images -> (N, 3, crop, crop) float32 via :func:`minicaffe.preprocess.preprocess_image`, with
    ``spec`` (a model's :class:`~minicaffe.models.Preprocessing`) or Caffe's ILSVRC recipe (resize
    256x256, RGB->BGR, subtract the mean image, center crop)."""
    import dataclasses

    from .models import CAFFE_PREPROCESSING
    from .preprocess import preprocess_image
    spec = dataclasses.replace(spec or CAFFE_PREPROCESSING, crop=crop)
    return np.stack([np.asarray(preprocess_image(p, spec), dtype=np.float32) for p in paths])


def random_input(shape, n, seed=0):
    """``n`` seeded normal inputs of the net input ``shape`` (its batch dimension replaced), scaled by
    :data:`RANDOM_SCALE` -> (n, C, H, W) float32."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + tuple(shape[1:])) * RANDOM_SCALE).astype(np.float32)


def stored_input(refs, name):
    """The input blob ``name`` as a ``caffe-npz:`` reference among ``refs`` stores it -> (x, description),
    or None when none does."""
    for r in refs:
        if r.startswith("caffe-npz:"):
            blobs = reference_blobs(r, None, None, None)
            key = npz_key(name)
            if key in blobs:
                return np.ascontiguousarray(blobs[key], dtype=np.float32), f"{r.split(':', 1)[1]}[{key}]"
    return None


# ---------------------------------------------------------------------------------- running
def run_check(prototxt, weights, x, against, tol=1e-4, backend="cpu", net=None, errors=None):
    """Run minicaffe and each reference on x: (N, C, H, W). Returns (rows per reference, ours, net).

    ``against``: list of reference names (see :func:`minicaffe.reference.reference_blobs`);
    ``net``: an already built :class:`minicaffe.Net` of the same prototxt + weights (else built);
    ``errors``: a dict to collect reference name -> MinicaffeError of the references that cannot
    run (the others still run); without it the first such error is raised.
    """
    if net is None:
        from .net import Net
        net = Net(prototxt, weights, backend=backend)
    ours = net.forward(x)
    order = list(ours)
    out = OrderedDict()
    for kind in against:
        try:
            ref = reference_blobs(kind, prototxt, weights, x)
        except Exception as e:  # a reference's own failure (cv2.error, ...) is reported, not fatal
            if errors is None:
                raise
            errors[kind] = e if isinstance(e, MinicaffeError) else \
                MinicaffeError(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
            continue
        out[kind] = compare_blobs(ours, ref, tol, order)
    return out, ours, net
