"""The experiment drivers shared by ``python -m minicaffe.transfer`` and ``scripts/reproduce_decaf.py``.

Each ``run_*`` function takes a loaded dataset, computes (or loads from the cache) the feature
sets it is asked for — deep layers such as ``decaf6``, concatenations such as ``pool5+fc6``,
and the hand-crafted baselines ``hog`` / ``raw`` — and evaluates every (feature set,
classifier) pair over the protocol's splits, returning a list of
:class:`~minicaffe.transfer.protocols.Result`. Classifier specs are strings: ``lr``, ``svm``,
``lr+dropout``, ``svm+dropout`` (dropout rate 0.5, Caffe's). This module prints nothing but
progress bars and does not write files (see ``report.py``).
"""
from __future__ import annotations

import numpy as np

from .baselines import BASELINES, compute_baseline
from .features import compute_features
from .protocols import (
    OFFICE_SETTINGS,
    caltech101_splits,
    evaluate,
    evaluate_office,
    office_splits,
    official_split,
    sun397_splits,
)

DEFAULT_CLASSIFIERS = ("lr", "svm", "svm+dropout")
DROPOUT_RATE = 0.5


def parse_classifier(spec):
    """``"svm+dropout"`` -> ("svm", 0.5); ``"lr"`` -> ("lr", 0.0)."""
    kind, _, extra = spec.partition("+")
    if kind not in ("lr", "svm") or extra not in ("", "dropout"):
        raise ValueError(f"classifier spec must be lr, svm, lr+dropout or svm+dropout, got {spec!r}")
    return kind, (DROPOUT_RATE if extra else 0.0)


def feature_sets(items, model, specs, cache=None, backend="cpu", batch_size=16, progress=False,
                 errors="skip", baseline_kw=None):
    """items: N images; specs: ["decaf6", "pool5+fc6", "hog", "raw", ...] -> {spec: (N, D)}.

    Every deep layer is computed once (one forward pass per image for all of them); a ``+``
    concatenates layers column-wise in the order written."""
    baseline_kw = baseline_kw or {}
    deep = sorted({part for s in specs if s not in BASELINES for part in s.split("+")})
    feats = {}
    if deep:
        feats = compute_features(items, model, deep, backend=backend, batch_size=batch_size, cache=cache,
                                 errors=errors, progress=progress)
    out = {}
    for s in specs:
        if s in BASELINES:
            out[s] = compute_baseline(items, s, errors=errors, **baseline_kw.get(s, {}))
        else:
            out[s] = np.concatenate([feats[p] for p in s.split("+")], axis=1)
    return out


def run_splits(sets, labels, splits, classifiers=DEFAULT_CLASSIFIERS, scale="standardize", seed=0, **kw):
    """{feature name: (N, D)} x classifier specs -> [Result] over ``splits``."""
    results = []
    for name, X in sets.items():
        for c in classifiers:
            kind, rate = parse_classifier(c)
            results.append(evaluate(X, labels, splits, kind, scale=scale, dropout=rate, seed=seed,
                                    features=name, **kw))
    return results


def run_caltech101(ds, model, specs, n_train=30, max_test=None, n_splits=5, seed=0, classifiers=DEFAULT_CLASSIFIERS,
                   curve=(), scale="standardize", **fkw):
    """Caltech-101 table (and, for each n in ``curve``, the first classifier on the first spec).
    Returns (table results, curve results)."""
    sets = feature_sets(ds.items, model, specs, **fkw)
    table = run_splits(sets, ds.labels, caltech101_splits(ds, n_train, max_test, n_splits, seed), classifiers,
                       scale=scale, seed=seed)
    curve_res = []
    first = specs[0]
    for n in curve:
        sp = caltech101_splits(ds, n, max_test, n_splits, seed)
        r = run_splits({f"{first} ({n}/class)": sets[first]}, ds.labels, sp, classifiers[:1], scale=scale,
                       seed=seed)[0]
        curve_res.append((n, r))
    return table, curve_res


def run_sun397(ds, model, specs, n_splits=5, seed=0, classifiers=("lr",), scale="standardize", **fkw):
    sets = feature_sets(ds.items, model, specs, **fkw)
    return run_splits(sets, ds.labels, sun397_splits(ds, n_splits, seed), classifiers, scale=scale, seed=seed)


def run_office(source, target, model, specs, n_splits=5, seed=0, classifiers=("svm",), settings=OFFICE_SETTINGS,
               scale="standardize", **fkw):
    """Every (feature, classifier, setting) on source -> target. Features of both domains are
    computed by the same call so the cache and the model are shared."""
    both = feature_sets(source.items + target.items, model, specs, **fkw)
    ns = len(source)
    splits = office_splits(source, target, n_splits=n_splits, seed=seed)
    results = []
    for name, X in both.items():
        Xs, Xt = X[:ns], X[ns:]
        for c in classifiers:
            kind, rate = parse_classifier(c)
            for setting in settings:
                results.append(evaluate_office(Xs, source.labels, Xt, target.labels, splits, setting, kind,
                                               scale=scale, dropout=rate, seed=seed, features=name))
    return results


def run_cub200(ds_by_crop, model, specs, seed=0, classifiers=("lr",), scale="standardize", **fkw):
    """ds_by_crop: {"whole": Dataset, "bbox": Dataset} -> {crop: [Result]} on the official split."""
    out = {}
    for crop, ds in ds_by_crop.items():
        sets = feature_sets(ds.items, model, specs, **fkw)
        out[crop] = run_splits(sets, ds.labels, official_split(ds), classifiers, scale=scale, seed=seed)
    return out
