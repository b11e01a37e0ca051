"""The DeCAF evaluation protocols: dataset readers for the standard on-disk layouts and their splits.

Each reader returns a :class:`Dataset` (image items, integer labels, class names, per-item
metadata); each protocol returns index splits (:class:`Split`) that are reproducible from a
seed (split ``s`` draws from ``numpy.random.default_rng([seed, s])``) and never put an image in
both train and test. :func:`evaluate` then fits a classifier per split and reports mean
per-class accuracy, mean ± std over splits; :func:`evaluate_select` first picks, per split, one
of several candidate feature sets by cross-validation on that split's training rows only.
Expected layouts (the archives as their authors ship them):

* **Folder dataset** (:func:`load_folder`): ``ROOT/<class>/**/<image>.(jpg|jpeg|png|bmp|ppm|pgm|tif)``;
  class names are the sorted sub-folder names. Generic protocols: :func:`kfold_splits`
  (stratified k-fold) and :func:`load_fixed_split` (``ROOT/train/<class>/...`` and
  ``ROOT/test/<class>/...``, or ``val`` for ``test``).
* **Caltech-101** (:func:`load_caltech101`): ``ROOT/101_ObjectCategories/<class>/image_NNNN.jpg``
  (or ``ROOT`` itself being ``101_ObjectCategories``). The clutter class ``BACKGROUND_Google``
  is excluded by default (101 classes, as most papers report); ``background="include"`` keeps it
  as a 102nd class. ``Faces`` and ``Faces_easy`` are both kept (they are distinct classes in the
  archive). :func:`per_class_splits` draws N training images per class (30 by default; 1, 5,
  10, 15, 20 for the curve) and tests on the rest, optionally capped at ``max_test`` per class.
* **SUN-397** (:func:`load_sun397`): ``ROOT/<letter>/<class>[/<sub>]/sun_*.jpg`` with
  ``ROOT/ClassName.txt``; the official partitions ``Partitions/Training_0k.txt`` /
  ``Testing_0k.txt`` (50 + 50 per class; lines like ``/a/abbey/sun_xxx.jpg``), looked for in
  ``ROOT/Partitions`` or ``ROOT/../Partitions``, are used when present (:func:`sun397_splits`);
  otherwise 50/50 per class is drawn at random.
* **Office** (:func:`load_office`): ``ROOT/<domain>/images/<class>/*.jpg`` for domains
  ``amazon``, ``dslr``, ``webcam`` (the Office-31 archive; ``ROOT/<domain>/<class>/`` also
  works). :func:`office_splits` follows Saenko et al. 2010: 20 source images per class
  (8 when the source is dslr or webcam), 3 labelled target images per class, the rest of the
  target is the test set; settings ``source`` (train on source only), ``target`` (the 3 per
  class only), ``source+target`` and ``daume`` (Daumé III feature augmentation, :func:`daume_augment`).
* **CUB-200-2011** (:func:`load_cub200`): ``ROOT/images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt`` and ``ROOT/images/...``
  (``ROOT`` = ``CUB_200_2011``). ``crop="whole"`` uses the whole image, ``crop="bbox"`` the
  dataset's box enlarged 1.5x about its centre and clipped to the image (:func:`enlarge_box`);
  the split is the official one (5994 train / 5794 test).

This module does not compute features, download datasets, or check that an archive is complete
beyond what it reads.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError
from .classifiers import (
    classifier_name,
    make_classifier,
    mean_per_class_accuracy,
    select_feature_set,
)
from .features import ImageRef

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".gif", ".webp")


@dataclass
class Dataset:
    """items: N image items (paths or ImageRef); labels: (N,) int in [0, len(classes));
    meta: per-item arrays or values (e.g. ``meta["official_train"]`` for CUB)."""
    items: list
    labels: np.ndarray
    classes: list
    root: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.items)

    def subset(self, idx):
        idx = np.asarray(idx, int)
        meta = {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == len(self.items) else v)
                for k, v in self.meta.items()}
        return Dataset([self.items[i] for i in idx], self.labels[idx], list(self.classes), self.root, meta)


@dataclass
class Split:
    """train / test: index arrays into one Dataset (or, for Office, see OfficeSplit)."""
    train: np.ndarray
    test: np.ndarray
    name: str = ""


# ----------------------------------------------------------------------------- readers
def _is_image(p: pathlib.Path):
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def load_folder(root, exclude=(), classes=None) -> Dataset:
    """ROOT/<class>/**/<image> -> Dataset. ``exclude``: class folder names to drop; ``classes``:
    a fixed class list (names not present are an error) so train/test folders share label ids."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name not in exclude)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetError(f"{root}: class folder {extra[0]!r} is not among the training classes")
    items, labels = [], []
    for k, c in enumerate(classes):
        d = root / c
        if not d.is_dir():
            continue
        files = sorted(p for p in d.rglob("*") if _is_image(p))
        items += [str(p) for p in files]
        labels += [k] * len(files)
    if not items:
        raise DatasetError(f"{root}: no images found (expected ROOT/<class>/<image>.jpg)")
    return Dataset(items, np.asarray(labels, int), list(classes), str(root))


def load_caltech101(root, background="exclude") -> Dataset:
    """Caltech-101 -> Dataset (101 classes, or 102 with ``background="include"``)."""
    root = pathlib.Path(root)
    if (root / "101_ObjectCategories").is_dir():
        root = root / "101_ObjectCategories"
    if background not in ("exclude", "include"):
        raise ValueError(f"background must be 'exclude' or 'include', got {background!r}")
    exclude = ("BACKGROUND_Google",) if background == "exclude" else ()
    return load_folder(root, exclude=exclude)


def load_sun397(root) -> Dataset:
    """SUN-397 -> Dataset; class names like ``a/abbey`` (from ClassName.txt when present)."""
    root = pathlib.Path(root)
    if (root / "SUN397").is_dir():
        root = root / "SUN397"
    names_file = root / "ClassName.txt"
    if names_file.is_file():
        classes = [ln.strip().strip("/") for ln in names_file.read_text().splitlines() if ln.strip()]
    else:
        # no class list: every folder holding images directly is a class (a/abbey, b/bakery/shop ...)
        classes = sorted(str(d.relative_to(root)).replace(os.sep, "/") for d in root.rglob("*")
                         if d.is_dir() and any(_is_image(p) for p in d.iterdir()))
    items, labels, rel = [], [], []
    for k, c in enumerate(classes):
        d = root / c
        if not d.is_dir():
            raise DatasetError(f"{d}: class folder listed in ClassName.txt is missing")
        files = sorted(p for p in d.iterdir() if _is_image(p))
        items += [str(p) for p in files]
        rel += ["/" + str(p.relative_to(root)).replace(os.sep, "/") for p in files]
        labels += [k] * len(files)
    if not items:
        raise DatasetError(f"{root}: no SUN-397 images found (expected ROOT/<letter>/<class>/sun_*.jpg)")
    return Dataset(items, np.asarray(labels, int), classes, str(root), {"relpath": np.asarray(rel)})


OFFICE_DOMAINS = ("amazon", "dslr", "webcam")


def load_office(root, domain) -> Dataset:
    """One Office domain -> Dataset; ROOT/<domain>/images/<class>/ (or ROOT/<domain>/<class>/)."""
    if domain not in OFFICE_DOMAINS:
        raise ValueError(f"Office domain must be one of {OFFICE_DOMAINS}, got {domain!r}")
    d = pathlib.Path(root) / domain
    if (d / "images").is_dir():
        d = d / "images"
    ds = load_folder(d)
    ds.meta["domain"] = domain
    return ds


def enlarge_box(x, y, w, h, img_w, img_h, factor=1.5):
    """CUB box (x, y, w, h; top-left + size, pixels) -> (x0, y0, x1, y1) scaled ``factor`` about
    its centre and clipped to the image (x1, y1 exclusive)."""
    cx, cy = x + w / 2.0, y + h / 2.0
    hw, hh = w * factor / 2.0, h * factor / 2.0
    x0, y0 = max(0.0, cx - hw), max(0.0, cy - hh)
    x1, y1 = min(float(img_w), cx + hw), min(float(img_h), cy + hh)
    return (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))


def _read_table(path, ncols, conv):
    if not path.is_file():
        raise DatasetError(f"{path}: CUB-200-2011 file missing")
    out = {}
    for ln_no, ln in enumerate(path.read_text().splitlines(), 1):
        parts = ln.split()
        if not parts:
            continue
        if len(parts) < ncols:
            raise DatasetError(f"{path}:{ln_no}: expected {ncols} columns, got {len(parts)}")
        out[int(parts[0])] = conv(parts[1:]) if ncols > 2 else conv(parts[1])
    return out


def load_cub200(root, crop="whole", factor=1.5) -> Dataset:
    """CUB-200-2011 -> Dataset with ``meta["official_train"]`` (bool, N). ``crop``: whole | bbox."""
    root = pathlib.Path(root)
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    if crop not in ("whole", "bbox"):
        raise ValueError(f"crop must be 'whole' or 'bbox', got {crop!r}")
    paths = _read_table(root / "images.txt", 2, str)
    labels = _read_table(root / "image_class_labels.txt", 2, int)
    train = _read_table(root / "train_test_split.txt", 2, int)
    classes_t = _read_table(root / "classes.txt", 2, str)
    boxes = _read_table(root / "bounding_boxes.txt", 5, lambda v: tuple(float(a) for a in v)) if crop == "bbox" else {}
    items, y, tr = [], [], []
    for i in sorted(paths):
        p = root / "images" / paths[i]
        if crop == "bbox":
            if i not in boxes:
                raise DatasetError(f"{root / 'bounding_boxes.txt'}: no box for image id {i}")
            from PIL import Image
            try:
                with Image.open(p) as im:        # lazy: reads the header only
                    w, h = im.size
            except OSError as e:
                raise DatasetError(f"{p}: cannot read image size ({e})") from None
            items.append(ImageRef(str(p), enlarge_box(*boxes[i], w, h, factor)))
        else:
            items.append(str(p))
        y.append(labels[i] - 1)                # CUB class ids are 1-based
        tr.append(train[i] == 1)
    classes = [classes_t[k] for k in sorted(classes_t)]
    return Dataset(items, np.asarray(y, int), classes, str(root), {"official_train": np.asarray(tr, bool)})


def load_fixed_split(root):
    """ROOT/train/<class>/ + ROOT/test|val/<class>/ -> (Dataset of both, [Split])."""
    root = pathlib.Path(root)
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise DatasetError(f"{root}: a fixed split needs ROOT/train/<class>/ and ROOT/test/<class>/ (or val/)")
    tr = load_folder(root / "train")
    te = load_folder(test_dir, classes=tr.classes)
    ds = Dataset(tr.items + te.items, np.concatenate([tr.labels, te.labels]), tr.classes, str(root))
    n = len(tr)
    return ds, [Split(np.arange(n), np.arange(n, len(ds)), "fixed")]


# ----------------------------------------------------------------------------- splits
def per_class_splits(labels, n_train, max_test=None, n_splits=5, seed=0, min_test=1):
    """(N,) labels -> n_splits Splits with exactly ``n_train`` training images per class and the
    rest (at most ``max_test`` per class) as test. A class with fewer than ``n_train + min_test``
    images is an error naming the class index."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    splits = []
    for s in range(n_splits):
        rng = np.random.default_rng([seed, s])
        tr, te = [], []
        for c in classes:
            idx = np.flatnonzero(labels == c)
            if len(idx) < n_train + min_test:
                raise DatasetError(f"class {c} has {len(idx)} images; {n_train} train + {min_test} test needed")
            idx = rng.permutation(idx)
            tr.append(idx[:n_train])
            rest = idx[n_train:]
            te.append(rest if max_test is None else rest[:max_test])
        splits.append(Split(np.sort(np.concatenate(tr)), np.sort(np.concatenate(te)), f"split{s}"))
    return splits


def caltech101_splits(ds, n_train=30, max_test=None, n_splits=5, seed=0):
    """DeCAF's Caltech-101 protocol: ``n_train`` per class (30), the rest tested, 5 splits."""
    return per_class_splits(ds.labels, n_train, max_test=max_test, n_splits=n_splits, seed=seed)


def _find_partitions(root):
    for d in (root / "Partitions", root.parent / "Partitions"):
        if (d / "Training_01.txt").is_file():
            return d
    return None


def sun397_splits(ds, n_splits=5, seed=0, n_train=50, n_test=50):
    """Official partitions 1..n_splits when found next to the data, else random 50/50 per class."""
    part = _find_partitions(pathlib.Path(ds.root))
    if part is None:
        return per_class_splits(ds.labels, n_train, max_test=n_test, n_splits=n_splits, seed=seed)
    index = {r: i for i, r in enumerate(ds.meta["relpath"])}
    splits = []
    for k in range(1, n_splits + 1):
        sets = []
        for kind in ("Training", "Testing"):
            f = part / f"{kind}_{k:02d}.txt"
            if not f.is_file():
                raise DatasetError(f"{f}: SUN-397 partition file missing")
            rows = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            missing = [r for r in rows if r not in index]
            if missing:
                raise DatasetError(f"{f}: lists {len(missing)} images not found under {ds.root}, e.g. {missing[0]}")
            sets.append(np.sort(np.asarray([index[r] for r in rows], int)))
        splits.append(Split(sets[0], sets[1], f"partition{k:02d}"))
    return splits


def kfold_splits(labels, k=5, seed=0):
    """Stratified k-fold over any labelled dataset: k Splits whose test parts tile the data."""
    from sklearn.model_selection import StratifiedKFold
    labels = np.asarray(labels)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Split(tr, te, f"fold{i}") for i, (tr, te) in enumerate(skf.split(np.zeros(len(labels)), labels))]


def official_split(ds):
    """CUB: the dataset's own train_test_split.txt as one Split."""
    tr = ds.meta["official_train"]
    return [Split(np.flatnonzero(tr), np.flatnonzero(~tr), "official")]


@dataclass
class OfficeSplit:
    """Indices into the source Dataset (source_train) and the target Dataset (target_train / test)."""
    source_train: np.ndarray
    target_train: np.ndarray
    target_test: np.ndarray
    name: str = ""


def office_splits(source, target, n_source=None, n_target=3, n_splits=5, seed=0):
    """Saenko et al.'s protocol: ``n_source`` per class from the source domain (20 for amazon, 8
    for dslr/webcam), ``n_target`` labelled per class from the target, test on the rest of the
    target. Source and target must have the same class names."""
    if source.classes != target.classes:
        raise DatasetError(f"{source.root} and {target.root} have different class folders")
    if n_source is None:
        n_source = 20 if source.meta.get("domain") == "amazon" else 8
    src = per_class_splits(source.labels, n_source, n_splits=n_splits, seed=seed, min_test=0)
    tgt = per_class_splits(target.labels, n_target, n_splits=n_splits, seed=seed + 1)
    return [OfficeSplit(a.train, b.train, b.test, f"split{i}") for i, (a, b) in enumerate(zip(src, tgt))]


def daume_augment(X, domain):
    """Daumé III "frustratingly easy" augmentation: X (N, D) -> (N, 3D);
    source rows -> [x, x, 0], target rows -> [x, 0, x] (shared, source-only, target-only copies)."""
    X = np.asarray(X, np.float32)
    z = np.zeros_like(X)
    if domain == "source":
        return np.concatenate([X, X, z], axis=1)
    if domain == "target":
        return np.concatenate([X, z, X], axis=1)
    raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")


OFFICE_SETTINGS = ("source", "target", "source+target", "daume")


def office_train_test(Xs, ys, Xt, yt, split, setting):
    """-> (X_train, y_train, X_test, y_test) for one Office setting on one OfficeSplit."""
    s, t, te = split.source_train, split.target_train, split.target_test
    if setting == "source":
        return Xs[s], ys[s], Xt[te], yt[te]
    if setting == "target":
        return Xt[t], yt[t], Xt[te], yt[te]
    if setting == "source+target":
        return np.concatenate([Xs[s], Xt[t]]), np.concatenate([ys[s], yt[t]]), Xt[te], yt[te]
    if setting == "daume":
        Xtr = np.concatenate([daume_augment(Xs[s], "source"), daume_augment(Xt[t], "target")])
        return Xtr, np.concatenate([ys[s], yt[t]]), daume_augment(Xt[te], "target"), yt[te]
    raise ValueError(f"Office setting must be one of {OFFICE_SETTINGS}, got {setting!r}")


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Result:
    """Mean per-class accuracy over splits (fractions in [0, 1])."""
    name: str
    per_split: list
    notes: list = field(default_factory=list)
    features: str = ""
    classifier: str = ""
    chosen: list = field(default_factory=list)   # evaluate_select: the candidate picked on each split

    @property
    def mean(self):
        return float(np.mean(self.per_split))

    @property
    def std(self):
        return float(np.std(self.per_split))

    def __str__(self):
        return f"{self.name}: {100 * self.mean:.2f} ± {100 * self.std:.2f} ({len(self.per_split)} splits)"


def _drop_nan(X, y):
    ok = ~np.isnan(X).any(axis=1)
    return X[ok], y[ok]


def fit_score(Xtr, ytr, Xte, yte, kind="lr", scale="standardize", dropout=0.0, seed=0, **kw):
    """Fit one classifier (C by CV on the training part) -> (mean per-class accuracy, cv note).
    Rows with NaN (images that failed to decode) are dropped from both parts."""
    Xtr, ytr = _drop_nan(Xtr, ytr)
    Xte, yte = _drop_nan(Xte, yte)
    clf = make_classifier(kind, scale=scale, dropout=dropout, seed=seed, **kw).fit(Xtr, ytr)
    return mean_per_class_accuracy(yte, clf.predict(Xte)), clf.cv_note_


def evaluate(X, y, splits, kind="lr", scale="standardize", dropout=0.0, name=None, seed=0, features="",
             **kw) -> Result:
    """X: (N, D) features, y: (N,) labels, splits: [Split] -> Result over the splits."""
    X, y = np.asarray(X), np.asarray(y)
    clf = classifier_name(kind, dropout)
    res = Result(name or f"{features} {clf}".strip(), [], features=features, classifier=clf)
    for sp in splits:
        acc, note = fit_score(X[sp.train], y[sp.train], X[sp.test], y[sp.test], kind, scale, dropout, seed, **kw)
        res.per_split.append(acc)
        res.notes.append(note)
    return res


def evaluate_select(candidates, y, splits, kind="lr", scale="standardize", dropout=0.0, name=None, seed=0,
                    features="", **kw) -> Result:
    """candidates: {name: (N, D_k)} in the order requested, y: (N,), splits -> Result whose split
    ``s`` tests the candidate that :func:`~minicaffe.transfer.classifiers.select_feature_set` chose
    from the *training rows of split s only* (``Result.chosen[s]``; the note adds the CV scores).
    Only the chosen candidate's test rows are ever read (and only to predict)."""
    names, y = list(candidates), np.asarray(y)
    clf_name = classifier_name(kind, dropout)
    res = Result(name or f"{features} {clf_name}".strip(), [], features=features, classifier=clf_name)
    for sp in splits:
        k, scores, clf = select_feature_set([np.asarray(candidates[n])[sp.train] for n in names], y[sp.train],
                                            kind, scale=scale, dropout=dropout, seed=seed, **kw)
        Xte, yte = _drop_nan(np.asarray(candidates[names[k]])[sp.test], y[sp.test])
        res.per_split.append(mean_per_class_accuracy(yte, clf.predict(Xte)))
        res.chosen.append(names[k])
        res.notes.append(f"{clf.cv_note_}; chose {names[k]} (CV " +
                         ", ".join(f"{n} {100 * v:.2f}" for n, v in zip(names, scores)) + ")")
    return res


def evaluate_office(Xs, ys, Xt, yt, splits, setting, kind="svm", scale="standardize", dropout=0.0,
                    name=None, seed=0, features="", **kw) -> Result:
    """One Office setting over OfficeSplits -> Result (accuracy on the unlabelled target images)."""
    clf = f"{setting} ({classifier_name(kind, dropout)})"
    res = Result(name or f"{features} {clf}".strip(), [], features=features, classifier=clf)
    for sp in splits:
        acc, note = fit_score(*office_train_test(Xs, ys, Xt, yt, sp, setting), kind, scale, dropout, seed, **kw)
        res.per_split.append(acc)
        res.notes.append(note)
    return res
