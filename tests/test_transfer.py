"""DeCAF transfer experiments: protocol split logic, dataset readers, classifiers, feature cache, CLI, real data.

The protocol tests run on small datasets generated in a temporary folder in each archive's own
layout (Caltech-101, SUN-397 with partition files, Office-31, CUB-200-2011 with its text files):
class counts, no image in both train and test, seeds reproducible. The offline test extracts
EfficientNet-Lite0 features (the embedded ImageNet weights, the model's own 224 preprocessing) of
real images — 50 of scikit-image's lfw_subset and 120 Fashion-MNIST test images — into a
session-scoped temporary cache, and checks that deep features + logistic regression beat raw
pixels and HOG by a clear margin in mean per-class accuracy over 5 splits.
"""
import pathlib

import numpy as np
import pytest
from PIL import Image

from minicaffe.cli import run as run_cli
from minicaffe.transfer import experiments as ex
from minicaffe.transfer import protocols as P
from minicaffe.transfer.classifiers import (
    DropoutClassifier,
    make_classifier,
    mean_per_class_accuracy,
)
from minicaffe.transfer.cli import main as transfer_main
from minicaffe.transfer.features import (
    FeatureCache,
    FeatureModel,
    ImageRef,
    compute_features,
    load_rgb,
)

LITE0 = "efficientnet-lite0"
TEST_CS = (0.01, 1.0, 100.0)


def _png(path, seed, size=(12, 10)):
    """A small random RGB PNG (distinct content per seed so content hashes differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _folder(root, counts, seed=0):
    """root/<class>/img_i.png with counts {class: n}."""
    k = seed * 1000
    for c, n in counts.items():
        for i in range(n):
            _png(root / c / f"img_{i:03d}.png", k)
            k += 1
    return root


def _check_split(sp, labels, n_train=None, max_test=None, what=""):
    tr, te = set(sp.train.tolist()), set(sp.test.tolist())
    assert not tr & te, f"{what}: {len(tr & te)} images in both train and test"
    assert len(tr) == len(sp.train) and len(te) == len(sp.test), f"{what}: duplicate indices"
    for c in np.unique(labels):
        ntr = int(np.sum(labels[sp.train] == c))
        nte = int(np.sum(labels[sp.test] == c))
        if n_train is not None:
            assert ntr == n_train, f"{what}: class {c} has {ntr} training images, expected {n_train}"
            rest = int(np.sum(labels == c)) - n_train
            assert nte == (rest if max_test is None else min(rest, max_test)), f"{what}: class {c} has {nte} test"


# ----------------------------------------------------------------------------- folder / per-class / k-fold
@pytest.fixture(scope="module")
def folder_ds(tmp_path_factory):
    root = _folder(tmp_path_factory.mktemp("folder") / "data", {"cat": 12, "dog": 9, "emu": 15})
    return P.load_folder(root)


def test_load_folder_classes_and_counts(folder_ds):
    assert folder_ds.classes == ["cat", "dog", "emu"]
    counts = np.bincount(folder_ds.labels).tolist()
    assert counts == [12, 9, 15], f"per-class counts {counts}"
    assert all(pathlib.Path(p).parent.name == folder_ds.classes[y] for p, y in zip(folder_ds.items, folder_ds.labels))


def test_per_class_splits_counts_overlap_seeds(folder_ds):
    y = folder_ds.labels
    a = P.per_class_splits(y, 5, max_test=3, n_splits=5, seed=7)
    b = P.per_class_splits(y, 5, max_test=3, n_splits=5, seed=7)
    c = P.per_class_splits(y, 5, max_test=3, n_splits=5, seed=8)
    assert len(a) == 5
    for i, sp in enumerate(a):
        _check_split(sp, y, 5, 3, f"split {i}")
        assert np.array_equal(sp.train, b[i].train) and np.array_equal(sp.test, b[i].test), \
            f"split {i} differs between two runs with seed 7"
    assert any(not np.array_equal(s.train, t.train) for s, t in zip(a, c)), "seeds 7 and 8 gave identical splits"
    assert len({tuple(s.train) for s in a}) == 5, "the 5 splits are not all different"
    # uncapped: every remaining image is tested
    for sp in P.per_class_splits(y, 4, n_splits=2, seed=0):
        _check_split(sp, y, 4, None, "uncapped")
    with pytest.raises(P.DatasetError, match="class 1 has 9 images"):
        P.per_class_splits(y, 9)


def test_kfold_tiles_the_data(folder_ds):
    y = folder_ds.labels
    folds = P.kfold_splits(y, k=3, seed=0)
    allte = np.concatenate([f.test for f in folds])
    assert sorted(allte.tolist()) == list(range(len(y))), "k-fold test parts do not tile the dataset"
    for f in folds:
        _check_split(f, y, what=f.name)
        assert len(f.train) + len(f.test) == len(y)
    again = P.kfold_splits(y, k=3, seed=0)
    assert all(np.array_equal(f.test, g.test) for f, g in zip(folds, again)), "k-fold not reproducible"


def test_fixed_split(tmp_path):
    _folder(tmp_path / "train", {"a": 3, "b": 2}, seed=1)
    _folder(tmp_path / "test", {"a": 2, "b": 1}, seed=2)
    ds, [sp] = P.load_fixed_split(tmp_path)
    assert ds.classes == ["a", "b"]
    assert len(sp.train) == 5 and len(sp.test) == 3
    assert all("/train/" in ds.items[i] for i in sp.train) and all("/test/" in ds.items[i] for i in sp.test)
    assert ds.labels[sp.test].tolist() == [0, 0, 1]
    _folder(tmp_path / "test", {"zebra": 1}, seed=3)
    with pytest.raises(P.DatasetError, match="zebra"):
        P.load_fixed_split(tmp_path)


# ----------------------------------------------------------------------------- Caltech-101
def test_caltech101_background_handling(tmp_path):
    root = tmp_path / "caltech" / "101_ObjectCategories"
    _folder(root, {"BACKGROUND_Google": 4, "Faces": 6, "Faces_easy": 6, "airplanes": 7})
    ex_ = P.load_caltech101(tmp_path / "caltech")          # the folder above 101_ObjectCategories works
    assert ex_.classes == ["Faces", "Faces_easy", "airplanes"], ex_.classes
    assert not any("BACKGROUND_Google" in p for p in ex_.items)
    inc = P.load_caltech101(root, background="include")
    assert inc.classes[0] == "BACKGROUND_Google" and len(inc) == 23
    splits = P.caltech101_splits(ex_, n_train=3, max_test=2, n_splits=5, seed=0)
    for sp in splits:
        _check_split(sp, ex_.labels, 3, 2, sp.name)


# ----------------------------------------------------------------------------- SUN-397
def _sun(tmp_path, per_class=4):
    root = tmp_path / "SUN397"
    classes = ["a/abbey", "b/bakery/shop", "c/canyon"]
    (root).mkdir(parents=True)
    (root / "ClassName.txt").write_text("".join(f"/{c}\n" for c in classes))
    k = 0
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"sun_{c.replace('/', '_')}_{i}.jpg".replace(".jpg", ".png"), 100 + k)
            k += 1
    return root, classes


def test_sun397_reader_and_partitions(tmp_path):
    root, classes = _sun(tmp_path)
    ds = P.load_sun397(root)
    assert ds.classes == classes and np.bincount(ds.labels).tolist() == [4, 4, 4]
    # no partition files: random n_train / n_test per class
    for sp in P.sun397_splits(ds, n_splits=2, seed=0, n_train=2, n_test=1):
        _check_split(sp, ds.labels, 2, 1, "random SUN split")
    # official-style partition files (paths relative to the root, one per line)
    part = tmp_path / "Partitions"
    part.mkdir()
    rel = list(ds.meta["relpath"])
    for k in (1, 2):
        tr = [r for i, r in enumerate(rel) if (i + k) % 2 == 0]
        te = [r for i, r in enumerate(rel) if (i + k) % 2 == 1]
        (part / f"Training_{k:02d}.txt").write_text("\n".join(tr) + "\n")
        (part / f"Testing_{k:02d}.txt").write_text("\n".join(te) + "\n")
    sp = P.sun397_splits(ds, n_splits=2)
    assert [s.name for s in sp] == ["partition01", "partition02"]
    assert [rel[i] for i in sp[0].train] == sorted(r for i, r in enumerate(rel) if (i + 1) % 2 == 0)
    for s in sp:
        _check_split(s, ds.labels, what=s.name)
    (part / "Testing_02.txt").write_text("/z/zoo/sun_missing.jpg\n")
    with pytest.raises(P.DatasetError, match="Testing_02.txt: lists 1 images not found"):
        P.sun397_splits(ds, n_splits=2)


# ----------------------------------------------------------------------------- Office
def test_office_reader_splits_and_daume(tmp_path):
    classes = {"back_pack": 24, "bike": 22}
    _folder(tmp_path / "amazon" / "images", classes, seed=1)
    _folder(tmp_path / "webcam" / "images", {"back_pack": 9, "bike": 11}, seed=2)
    src, tgt = P.load_office(tmp_path, "amazon"), P.load_office(tmp_path, "webcam")
    assert src.classes == tgt.classes == ["back_pack", "bike"]
    splits = P.office_splits(src, tgt, n_splits=3, seed=0)
    for sp in splits:
        assert np.bincount(src.labels[sp.source_train]).tolist() == [20, 20], "amazon source: 20 per class"
        assert np.bincount(tgt.labels[sp.target_train]).tolist() == [3, 3], "3 labelled target images per class"
        assert not set(sp.target_train) & set(sp.target_test), "a target image is both trained on and tested"
        assert len(sp.target_train) + len(sp.target_test) == len(tgt), "the rest of the target is the test set"
    # webcam as source: 8 per class
    sp = P.office_splits(tgt, src, n_splits=1)[0]
    assert np.bincount(tgt.labels[sp.source_train]).tolist() == [8, 8]

    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    s, t = P.daume_augment(X, "source"), P.daume_augment(X, "target")
    assert np.array_equal(s, np.c_[X, X, 0 * X]) and np.array_equal(t, np.c_[X, 0 * X, X])
    Xs, Xt = np.ones((len(src), 2)), 2 * np.ones((len(tgt), 2))
    sp = splits[0]
    for setting, n_tr in (("source", 40), ("target", 6), ("source+target", 46), ("daume", 46)):
        Xtr, ytr, Xte, yte = P.office_train_test(Xs, src.labels, Xt, tgt.labels, sp, setting)
        assert len(Xtr) == len(ytr) == n_tr, f"{setting}: {len(Xtr)} training rows"
        assert len(Xte) == len(yte) == len(sp.target_test)
        assert Xtr.shape[1] == (6 if setting == "daume" else 2)
    with pytest.raises(P.DatasetError, match="different class folders"):
        P.office_splits(src, P.load_folder(tmp_path / "amazon" / "images", exclude=("bike",)))


# ----------------------------------------------------------------------------- CUB-200-2011
def test_cub200_reader_bbox_crop(tmp_path):
    root = tmp_path / "CUB_200_2011"
    rows = [  # id, relpath, class (1-based), train, box x y w h, image size w h
        (1, "001.Black_footed_Albatross/a.png", 1, 1, (10, 20, 40, 30), (100, 80)),
        (2, "001.Black_footed_Albatross/b.png", 1, 0, (0, 0, 60, 50), (100, 80)),
        (3, "002.Laysan_Albatross/c.png", 2, 1, (70, 60, 20, 16), (100, 80)),
    ]
    for i, rel, _, _, _, size in rows:
        _png(root / "images" / rel, 300 + i, size)
    (root / "images.txt").write_text("".join(f"{r[0]} {r[1]}\n" for r in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{r[0]} {r[2]}\n" for r in rows))
    (root / "train_test_split.txt").write_text("".join(f"{r[0]} {r[3]}\n" for r in rows))
    (root / "bounding_boxes.txt").write_text("".join(f"{r[0]} {' '.join(f'{v:.1f}' for v in r[4])}\n" for r in rows))
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    whole = P.load_cub200(tmp_path)
    assert whole.labels.tolist() == [0, 0, 1] and whole.classes[1] == "002.Laysan_Albatross"
    [sp] = P.official_split(whole)
    assert sp.train.tolist() == [0, 2] and sp.test.tolist() == [1]
    bbox = P.load_cub200(root, crop="bbox")
    # by hand: centre (30, 35), 1.5x -> 60 x 45 -> (0, 12.5, 60, 57.5) -> floor/ceil (0, 12, 60, 58)
    # box 2: centre (30, 25), 90 x 75 -> (-15, -12.5, 75, 62.5) -> clipped (0, 0, 75, 63)
    # box 3: centre (80, 68), 30 x 24 -> (65, 56, 95, 80)
    want = [(0, 12, 60, 58), (0, 0, 75, 63), (65, 56, 95, 80)]
    assert [r.box for r in bbox.items] == want, [r.box for r in bbox.items]
    assert all(isinstance(r, ImageRef) for r in bbox.items)
    crop = load_rgb(bbox.items[0])
    assert crop.shape == (46, 60, 3), f"crop shape {crop.shape}, expected 46 rows x 60 columns"
    full = np.asarray(Image.open(bbox.items[0].path).convert("RGB"), np.float32)
    assert np.array_equal(crop, full[12:58, 0:60]), "the crop is not the box's pixels (rows are y)"
    (root / "bounding_boxes.txt").write_text("1 1 2 3\n")
    with pytest.raises(P.DatasetError, match="bounding_boxes.txt:1: expected 5 columns"):
        P.load_cub200(root, crop="bbox")


# ----------------------------------------------------------------------------- classifiers
def test_dropout_variant_masks_and_scales():
    rng = np.random.default_rng(0)
    X = rng.uniform(1.0, 2.0, (40, 50)).astype(np.float32)    # no zeros: a zero in the output is a drop
    y = np.arange(40) % 2
    d = DropoutClassifier(rate=0.5, copies=4, seed=3)
    Xa, ya = d.augment(X, y)
    assert Xa.shape == (160, 50) and ya.tolist() == np.repeat(y, 4).tolist()
    rep = np.repeat(X, 4, axis=0)
    dropped = Xa == 0
    kept_ok = np.allclose(Xa[~dropped], 2.0 * rep[~dropped], rtol=1e-6)
    assert kept_ok, "kept features are not scaled by 1/(1-rate) = 2 (inverted dropout)"
    frac = dropped.mean()
    # 8000 Bernoulli(0.5) draws: std 0.0056, so +-0.03 is > 5 sigma
    assert abs(frac - 0.5) < 0.03, f"dropped fraction {frac:.3f}, expected 0.5"
    assert not np.array_equal(Xa[0], Xa[1]), "the copies of one row share a mask"
    Xb, _ = DropoutClassifier(rate=0.5, copies=4, seed=3).augment(X, y)
    assert np.array_equal(Xa, Xb), "same seed, different masks"
    X0, y0 = DropoutClassifier(rate=0.0).augment(X, y)
    assert np.array_equal(X0, X) and len(y0) == 40, "rate 0 must leave the features alone"
    with pytest.raises(ValueError, match="dropout rate"):
        DropoutClassifier(rate=1.0).augment(X, y)
    # test time: no mask, the fitted linear model applied to the features as they are
    d.fit(X, y)
    assert np.array_equal(d.predict(X), d.estimator_.predict(X))
    assert np.allclose(d.decision_function(X), X @ d.estimator_.coef_.ravel() + d.estimator_.intercept_, atol=1e-5)


def test_cv_classifier_learns_and_dropout_variant_fits():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (3, 20))
    y = np.repeat(np.arange(3), 30)
    X = (centres[y] + rng.normal(0, 1, (90, 20))).astype(np.float32)
    tr, te = np.arange(90) % 3 != 0, np.arange(90) % 3 == 0
    # the floor: a nearest-class-mean classifier on the same training rows (a linear model's baseline)
    means = np.stack([X[tr][y[tr] == c].mean(0) for c in range(3)])
    nearest = ((X[te][:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    floor = mean_per_class_accuracy(y[te], nearest)
    for kind, rate in (("lr", 0.0), ("svm", 0.0), ("svm", 0.5)):
        clf = make_classifier(kind, scale="l2", dropout=rate, seed=0).fit(X[tr], y[tr])
        acc = mean_per_class_accuracy(y[te], clf.predict(X[te]))
        assert acc >= floor - 1 / te.sum(), \
            f"{kind} dropout={rate}: mean per-class accuracy {acc:.3f} below nearest class mean {floor:.3f}"
        assert clf.cv_note_.startswith("C=") and "3-fold CV" in clf.cv_note_, clf.cv_note_
    one = make_classifier("lr").fit(X[[0, 30, 60]], y[[0, 30, 60]])     # 1 image per class
    assert "no CV" in one.cv_note_
    assert mean_per_class_accuracy([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.75)


# ----------------------------------------------------------------------------- layer choice (select:)
def _select_problem(seed=3):
    """3 classes x (20 train + 20 test) rows; a fixed split; two candidates built so that train-CV
    and test disagree: "blind" separates the classes on train rows only (its test rows are noise),
    "oracle" separates them on test rows only (its train rows are noise)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 40)
    train = np.flatnonzero(np.arange(120) % 40 < 20)
    test = np.flatnonzero(np.arange(120) % 40 >= 20)
    centres = rng.normal(0, 4, (3, 12))
    signal = (centres[y] + rng.normal(0, 1, (120, 12))).astype(np.float32)
    noise = rng.normal(0, 1, (120, 12)).astype(np.float32)
    blind, oracle = noise.copy(), noise.copy()
    blind[train], oracle[test] = signal[train], signal[test]
    return y, P.Split(train, test), {"oracle": oracle, "blind": blind}


def test_select_layer_uses_training_rows_only(monkeypatch):
    from minicaffe.transfer import classifiers as C
    y, sp, cands = _select_problem()
    seen = []
    real_fit = C.CVClassifier.fit

    def spy(self, X, yy):
        seen.append(np.asarray(X).copy())
        return real_fit(self, X, yy)
    monkeypatch.setattr(C.CVClassifier, "fit", spy)
    r = P.evaluate_select(cands, y, [sp], "lr", scale="l2", features="select", Cs=TEST_CS)
    # "oracle" would score ~100 % on the test rows; a choice that looked at them would take it
    assert r.chosen == ["blind"], f"chose {r.chosen} (notes {r.notes})"
    assert "chose blind" in r.notes[0] and "CV oracle" in r.notes[0], r.notes
    test_rows = {row.tobytes() for X in cands.values() for row in X[sp.test]}
    assert len(seen) == 2, f"{len(seen)} fits for 2 candidates"
    for X in seen:
        assert X.shape[0] == len(sp.train), f"a fit saw {X.shape[0]} rows, the split has {len(sp.train)} training rows"
        leaked = sum(row.tobytes() in test_rows for row in X)
        assert leaked == 0, f"{leaked} test rows reached a fit during the choice"
    # poisoning every test row of the unchosen candidate and shuffling the test labels changes nothing
    # in the choice (only the chosen candidate's test rows are read, to predict)
    poisoned = {k: v.copy() for k, v in cands.items()}
    poisoned["oracle"][sp.test] = np.nan
    y2 = y.copy()
    y2[sp.test] = np.random.default_rng(0).permutation(y[sp.test])
    r2 = P.evaluate_select(poisoned, y2, [sp], "lr", scale="l2", Cs=TEST_CS)
    assert r2.chosen == r.chosen and r2.notes == r.notes, f"{r2.notes} vs {r.notes}"


def test_select_layer_ties_go_to_the_first_listed():
    y, sp, cands = _select_problem()
    X = cands["blind"]
    for order in (("a", "b"), ("b", "a")):
        r = P.evaluate_select({order[0]: X, order[1]: X.copy()}, y, [sp, sp], "lr", scale="l2", Cs=TEST_CS)
        assert r.chosen == [order[0]] * 2, f"identical candidates {order}: chose {r.chosen}"
    from minicaffe.transfer.classifiers import select_feature_set
    one = np.array([sp.train[0], sp.train[20], sp.train[40]])   # 1 row per class: no CV possible
    k, scores, _ = select_feature_set([cands["oracle"][one], X[one]], y[one], Cs=TEST_CS)
    assert k == 0 and all(np.isnan(scores)), f"without CV the first candidate is taken, got {k}, {scores}"


def test_select_layer_equals_fitting_the_chosen_set_alone():
    from minicaffe.transfer.classifiers import select_feature_set
    y, sp, cands = _select_problem(seed=5)
    k, scores, clf = select_feature_set([cands["oracle"][sp.train], cands["blind"][sp.train]], y[sp.train],
                                        "lr", scale="l2", Cs=TEST_CS)
    assert k == 1 and scores[1] > scores[0] + 0.3, f"scores {scores}: blind should win clearly on train CV"
    alone = make_classifier("lr", scale="l2", Cs=TEST_CS).fit(cands["blind"][sp.train], y[sp.train])
    assert clf.C_ == alone.C_, f"C {clf.C_} vs {alone.C_}"
    for what in ("blind", "oracle"):
        Xte = cands[what][sp.test]
        assert np.array_equal(clf.predict(Xte), alone.predict(Xte)), f"predictions on {what} test rows differ"
        d = np.abs(clf.decision_function(Xte) - alone.decision_function(Xte)).max()
        assert d == 0.0, f"decision functions differ by max abs {d:g}"
    splits = P.per_class_splits(y, 10, n_splits=3, seed=0)
    both = {"noise": np.random.default_rng(9).normal(0, 1, (120, 12)), "signal": cands["blind"]}
    sel = P.evaluate_select(both, y, splits, "lr", scale="l2", Cs=TEST_CS)
    ref = {n: P.evaluate(X, y, splits, "lr", scale="l2", Cs=TEST_CS) for n, X in both.items()}
    want = [ref[c].per_split[s] for s, c in enumerate(sel.chosen)]
    assert sel.per_split == want, f"select {sel.per_split} vs the chosen sets fitted alone {want}"


def test_select_layer_spec_and_report():
    from minicaffe.transfer.report import chosen_counts, results_table
    assert ex.parse_select("select:features|a:gap+b") == ["features", "a:gap+b"]
    assert ex.parse_select("features+a") is None
    assert ex.spec_parts("select:features|a:gap+b") == ["features", "a:gap", "b"]
    for bad, msg in (("select:features|", "empty candidate"), ("select:a|a", "listed twice")):
        with pytest.raises(ValueError, match=msg):
            ex.parse_select(bad)
    assert chosen_counts(["b", "a", "b"]) == "b 2/3, a 1/3"
    r = P.Result("s", [0.9, 0.8, 1.0], ["C=1 by 3-fold CV; chose b"] * 3, features="select:a|b", classifier="LogReg",
                 chosen=["b", "a", "b"])
    row = results_table([r]).splitlines()[2]
    assert row.startswith("| select:a\\|b (chosen: b 2/3, a 1/3) | LogReg | 90.00 ± 8.16 | 3 | C=1 |"), row


# ----------------------------------------------------------------------------- real data, Lite0 features
def _lfw_small():
    from minicaffe.transfer.offline import load_lfw_subset
    ds = load_lfw_subset()
    idx = np.concatenate([np.flatnonzero(ds.labels == c)[:25] for c in (0, 1)])
    return ds.subset(idx)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="session")
def lfw_sets(cache_dir):
    ds = _lfw_small()
    sets = ex.feature_sets(ds.items, LITE0, ["features", "raw", "hog"], cache=FeatureCache(cache_dir),
                           baseline_kw={"raw": {"size": None}})
    return ds, sets


@pytest.fixture(scope="session")
def fashion_sets(cache_dir):
    from minicaffe.transfer.offline import fashion_mnist_dir, load_fashion_mnist
    if fashion_mnist_dir() is None:
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist, "
                    "/usr/share/datasets/fashion-mnist, or $FASHION_MNIST_DIR)")
    ds = load_fashion_mnist(per_class=12, seed=0)
    sets = ex.feature_sets(ds.items, LITE0, ["block15/project", "raw", "hog"], cache=FeatureCache(cache_dir),
                           baseline_kw={"raw": {"size": None}})
    return ds, sets


def _deep_vs_baselines(ds, sets, deep, n_train, what):
    """DeCAF's claim, tested on paired splits: the deep features beat each baseline by more than two
    standard errors of the per-split differences, and every feature set is above chance by more
    than three binomial standard errors of a guessing classifier on one split's test images. The
    floors follow from the splits' sizes, not from numbers this code produced."""
    splits = P.per_class_splits(ds.labels, n_train, n_splits=5, seed=0)
    # a 3-point C grid (the library's default has 6) keeps the 15680-d fits within the time budget
    res = {k: P.evaluate(X, ds.labels, splits, "lr", scale="l2", features=k, Cs=TEST_CS) for k, X in sets.items()}
    msg = ", ".join(f"{k} {100 * r.mean:.1f} ± {100 * r.std:.1f}" for k, r in res.items())
    chance = 1 / len(np.unique(ds.labels))
    floor = chance + 3 * np.sqrt(chance * (1 - chance) / len(splits[0].test))
    for k, r in res.items():
        assert min(r.per_split) > floor, f"{what}: {k} not above chance {chance:.2f} (+3 s.e. = {floor:.3f}): {msg}"
    for base in ("raw", "hog"):
        d = np.asarray(res[deep].per_split) - np.asarray(res[base].per_split)
        se = d.std(ddof=1) / np.sqrt(len(d))
        assert d.mean() > 2 * se and d.mean() > 0, \
            f"{what}: deep {deep} - {base} per split {np.round(100 * d, 1)} (mean {100 * d.mean():.1f}, " \
            f"2 s.e. {200 * se:.1f} points; {msg})"
    return res


@pytest.mark.slow
def test_lfw_deep_features_beat_raw_and_hog(lfw_sets):
    ds, sets = lfw_sets
    assert sets["features"].shape == (50, 1280) and not np.isnan(sets["features"]).any()
    assert sets["raw"].shape == (50, 25 * 25 * 3), "raw: native 25x25, grey replicated to RGB"
    # 10 train / 15 test per class (the measured accuracies: docs/transfer.md)
    _deep_vs_baselines(ds, sets, "features", 10, "lfw_subset")


@pytest.mark.slow
def test_fashion_deep_features_beat_raw_and_hog(fashion_sets):
    ds, sets = fashion_sets
    assert sets["block15/project"].shape == (120, 320 * 7 * 7)
    # 6 train / 6 test per class: few labels, where transfer matters (the measured accuracies: docs/transfer.md)
    _deep_vs_baselines(ds, sets, "block15/project", 6, "Fashion-MNIST")


def test_feature_cache_hit_does_not_recompute(lfw_sets, cache_dir, monkeypatch):
    ds, sets = lfw_sets
    cache = FeatureCache(cache_dir)

    def no_forward(self, backend="cpu"):
        raise AssertionError("a forward pass ran although every feature was cached")
    monkeypatch.setattr(FeatureModel, "net", no_forward)
    again = compute_features(ds.items, LITE0, ["features"], cache=cache)["features"]
    assert cache.hits == len(ds) and cache.misses == 0, f"hits {cache.hits}, misses {cache.misses}"
    assert np.array_equal(again, sets["features"]), "cached features differ from the computed ones"
    # another layer of the same images is a miss (the key includes the layer)
    with pytest.raises(AssertionError, match="forward pass ran"):
        compute_features(ds.items[:1], LITE0, ["block15/project"], cache=cache)


def test_feature_cache_keys_on_content_not_path(tmp_path):
    a = _png(tmp_path / "a.png", 5, (30, 20))
    b = tmp_path / "copy" / "renamed.png"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    cache = FeatureCache(tmp_path / "cache")
    fa = compute_features([str(a)], LITE0, ["features"], cache=cache)["features"]
    assert cache.misses == 1 and cache.hits == 0
    fb = compute_features([str(b)], LITE0, ["features"], cache=cache)["features"]
    assert cache.hits == 1, "a renamed copy of a cached image was recomputed"
    assert np.array_equal(fa, fb)
    compute_features([ImageRef(str(a), (0, 0, 10, 10))], LITE0, ["features"], cache=cache)
    assert cache.misses == 2, "a crop of a cached image must not reuse the whole image's features"


def test_pooled_layer_spec_is_the_spatial_mean_and_max(tmp_path):
    """``LAYER:gap`` / ``LAYER:gmp`` against the flattened blob reduced by hand (sum over the 7x7
    positions / 49; running maximum), and the multi-layer concatenation order."""
    rng = np.random.default_rng(3)
    items = [rng.integers(0, 256, (28, 28), dtype=np.uint8), rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)]
    cache = FeatureCache(tmp_path / "cache")
    f = compute_features(items, LITE0, ["block14/add", "block14/add:gap", "block14/add:gmp"], cache=cache)
    flat = f["block14/add"].astype(np.float64).reshape(2, 192, 49)       # C-major flatten of (192, 7, 7)
    mean, mx = np.zeros((2, 192)), np.full((2, 192), -np.inf)
    for p in range(49):
        mean += flat[:, :, p]
        mx = np.maximum(mx, flat[:, :, p])
    mean /= 49
    for name, got, want in (("gap", f["block14/add:gap"], mean), ("gmp", f["block14/add:gmp"], mx)):
        assert got.shape == (2, 192), f"block14/add:{name} shape {got.shape}"
        err = np.abs(got - want).max()
        assert err <= 1e-5 * max(1.0, np.abs(want).max()), f"block14/add:{name}: max abs error {err:.3g}"
    # pooled vectors are cached under their own key: a rerun does no forward pass
    cache.hits = cache.misses = 0
    again = compute_features(items, LITE0, ["block14/add:gap"], cache=cache)["block14/add:gap"]
    assert cache.hits == 2 and cache.misses == 0, f"hits {cache.hits}, misses {cache.misses}"
    assert np.array_equal(again, f["block14/add:gap"])
    sets = ex.feature_sets(items, LITE0, ["block14/add:gap+block14/add:gmp"], cache=cache)
    assert np.array_equal(sets["block14/add:gap+block14/add:gmp"], np.concatenate([f["block14/add:gap"],
                                                                                   f["block14/add:gmp"]], 1))


def test_parse_layer_and_pooling_errors():
    from minicaffe.errors import ModelError
    from minicaffe.transfer.features import parse_layer, pool_blob
    assert parse_layer("features") == ("features", None)
    assert parse_layer("block10/add:gmp") == ("block10/add", "gmp")
    for bad in ("block10/add:avg", ":gap", "x:"):
        with pytest.raises(ValueError, match="expected LAYER or LAYER:gap"):
            parse_layer(bad)
    with pytest.raises(ModelError, match="fc:gap: spatial pooling needs an"):
        pool_blob(np.zeros((2, 10), np.float32), "gap", "fc")


def test_paired_table_differences_and_wins():
    from minicaffe.transfer.report import paired_table
    R = P.Result
    res = [R("a", [0.90, 0.80, 0.85], features="deep", classifier="LogReg"),
           R("b", [0.85, 0.80, 0.90], features="hog", classifier="LogReg"),
           R("c", [0.50, 0.50, 0.50], features="hog", classifier="SVM")]
    t = paired_table(res, ["hog", "raw"])
    # differences +5, 0, -5 points: mean 0, population std sqrt(50/3) = 4.08, min -5, 1 win 1 tie 1 loss
    assert "| deep | LogReg | hog | +0.00 ± 4.08 | -5.00 | 1 / 1 / 1 |" in t, t
    assert "SVM" not in t, "a deep row was paired with a baseline of another classifier"
    assert paired_table(res[1:], ["hog"]) == ""


def test_fashion_mnist_dev_split_reads_the_train_file():
    from minicaffe.transfer.offline import (
        _read_idx,
        fashion_mnist_dir,
        load_fashion_mnist,
    )
    d = fashion_mnist_dir()
    if d is None or not (d / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST train file not installed")
    ds = load_fashion_mnist(per_class=3, seed=0, split="train")
    assert np.bincount(ds.labels).tolist() == [3] * 10, np.bincount(ds.labels)
    train = _read_idx(d / "train-images-idx3-ubyte.gz")
    assert all(np.array_equal(im, train[i]) for im, i in zip(ds.items, ds.meta["index"])), \
        "dev images are not the train-file images at the recorded indices"


# ----------------------------------------------------------------------------- CLI
def _cli(argv, capsys):
    rc = run_cli(transfer_main, argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, needle", [
    (["caltech101", "/no/such/caltech"], "/no/such/caltech: data folder not found"),
    (["offline", "lfw", "--classifiers", "lr,knn"], "--classifiers: classifier spec must be"),
    (["offline", "lfw", "--baselines", "sift"], "--baselines: 'sift' is not one of raw, hog"),
    (["offline", "lfw", "--splits", "0"], "--splits must be at least 1"),
    (["offline", "lfw", "--layers", "hog"], "--layers: 'hog' is a baseline"),
    (["offline", "lfw", "--layers", "decaf6"], "--layers: 'decaf6' is not a blob of efficientnet-lite0"),
    (["offline", "lfw", "--layers", "features+block9/add:avg"], "--layers: layer spec 'block9/add:avg': expected"),
    (["offline", "lfw", "--layers", "logits:gap"], "--layers: 'logits:gap': :gap needs a spatial"),
    (["offline", "lfw", "--layers", "select:features|hog"], "--layers: 'hog' is a baseline"),
    (["offline", "lfw", "--layers", "select:features||pool"], "--layers: 'select:features||pool': empty candidate"),
    (["offline", "lfw", "--layers", "select:features|decaf6"], "--layers: 'decaf6' is not a blob"),
    (["office", "/tmp", "--layers", "select:features|pool"], "select: is not supported by office"),
    (["office", "/tmp", "--source", "dslr", "--target", "dslr"], "--source and --target are both 'dslr'"),
    (["cub200", "/tmp", "--crop", "head"], "--crop: 'head' is not whole or bbox"),
    (["caltech101", "/tmp", "--curve", "1,x"], "--curve: expected comma-separated integers"),
])
def test_cli_errors_are_one_line(argv, needle, capsys):
    rc, _out, err = _cli(argv, capsys)
    assert rc == 2, f"exit status {rc}, stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicaffe: error:"), f"stderr: {err!r}"
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_cli_missing_dataset_file_and_help(tmp_path, capsys):
    (tmp_path / "CUB_200_2011").mkdir()
    rc, _, err = _cli(["cub200", str(tmp_path)], capsys)
    assert rc == 2 and "images.txt: CUB-200-2011 file missing" in err, err
    with pytest.raises(SystemExit) as e:
        transfer_main(["--help"])
    assert e.value.code == 0
    helptext = capsys.readouterr().out
    for word in ("caltech101", "sun397", "office", "cub200", "folder", "offline", "examples:", "svm+dropout"):
        assert word in helptext, f"{word!r} missing from --help"


def test_cli_folder_kfold_end_to_end(tmp_path, cache_dir, capsys):
    data = _folder(tmp_path / "data", {"x": 4, "y": 4}, seed=9)
    report = tmp_path / "r.md"
    rc, _out, err = _cli(["folder", str(data), "--protocol", "kfold", "--k", "2", "--baselines", "raw",
                         "--classifiers", "lr", "--cache", str(cache_dir), "-q", "--out", str(report)], capsys)
    assert rc == 0, err
    text = report.read_text()
    assert "| features | LogReg |" in text and "| raw | LogReg |" in text, text
    assert "## data (kfold, 2 classes)" in text
