"""The experiment drivers shared by ``python -m minicaffe.transfer`` and ``scripts/reproduce_decaf.py``.

Each ``run_*`` function takes a loaded dataset, computes (or loads from the cache) the feature
sets it is asked for — deep layers such as ``decaf6``, concatenations such as ``pool5+fc6``,
and the hand-crafted baselines ``hog`` / ``raw`` — and evaluates every (feature set,
classifier) pair over the protocol's splits, returning a list of
:class:`~minicaffe.transfer.protocols.Result`. A spec ``select:A|B|C`` is a *layer choice*: on
each split the candidate feature set (each itself a spec, ``+`` allowed) with the best
cross-validated score on that split's training images is used (ties to the first listed), see
:func:`~minicaffe.transfer.protocols.evaluate_select`. Classifier specs are strings: ``lr``, ``svm``,
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
    evaluate_select,
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


SELECT = "select:"


def parse_select(spec):
    """``"select:features|block15/project"`` -> ["features", "block15/project"]; any other spec -> None.
    An empty or repeated candidate is a ValueError naming the spec."""
    if not spec.startswith(SELECT):
        return None
    cands = spec[len(SELECT):].split("|")
    if any(not c for c in cands):
        raise ValueError(f"{spec!r}: empty candidate (expected select:SPEC|SPEC|...)")
    if len(set(cands)) != len(cands):
        raise ValueError(f"{spec!r}: a candidate is listed twice")
    return cands


def spec_parts(spec):
    """The deep layer parts a spec needs: ``"a+b"`` -> [a, b]; ``"select:a|b+c"`` -> [a, b, c]."""
    return [p for c in (parse_select(spec) or [spec]) for p in c.split("+")]


def feature_sets(items, model, specs, cache=None, backend="cpu", batch_size=16, progress=False,
                 errors="skip", baseline_kw=None):
    """items: N images; specs: ["decaf6", "pool5+fc6", "hog", "raw", ...] -> {spec: (N, D)}.

    Every deep layer is computed once (one forward pass per image for all of them); a ``+``
    concatenates layers column-wise in the order written; a ``select:A|B`` spec maps to
    {candidate: (N, D_k)} in the order written."""
    baseline_kw = baseline_kw or {}
    deep = sorted({part for s in specs if s not in BASELINES for part in spec_parts(s)})
    feats = {}
    if deep:
        feats = compute_features(items, model, deep, backend=backend, batch_size=batch_size, cache=cache,
                                 errors=errors, progress=progress)
    out = {}
    def concat(spec):
        return np.concatenate([feats[p] for p in spec.split("+")], axis=1)
    for s in specs:
        if s in BASELINES:
            out[s] = compute_baseline(items, s, errors=errors, **baseline_kw.get(s, {}))
        elif parse_select(s):
            out[s] = {c: concat(c) for c in parse_select(s)}
        else:
            out[s] = concat(s)
    return out


def run_splits(sets, labels, splits, classifiers=DEFAULT_CLASSIFIERS, scale="standardize", seed=0, **kw):
    """{feature name: (N, D) or {candidate: (N, D_k)}} x classifier specs -> [Result] over ``splits``
    (a dict of candidates is a per-split layer choice, :func:`evaluate_select`)."""
    results = []
    for name, X in sets.items():
        for c in classifiers:
            kind, rate = parse_classifier(c)
            run = evaluate_select if isinstance(X, dict) else evaluate
            results.append(run(X, labels, splits, kind, scale=scale, dropout=rate, seed=seed, features=name, **kw))
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
    if any(parse_select(s) for s in specs):
        raise ValueError("office: select: layer choice is not supported (use one spec per row)")
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
