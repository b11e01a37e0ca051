"""``minicaffe.similarity`` and ``python -m minicaffe.search``: exact, streamed, approximate, on real photos.

Exact search is checked against scikit-learn's brute-force cosine NearestNeighbors and a full
similarity matrix; the streaming path against a tracemalloc bound on its peak memory; the
approximate index against exact search (recall@10). On real data: six photos that ship with
scikit-image / scikit-learn, each with three transformed copies (tests/search_photos.py),
features from the embedded real EfficientNet-Lite0: every image's own copies must outrank every
other photo, and query images (a copy rotated and shrunk, never extracted) must find their photo.
"""
import json
import os
import shutil
import sys
import tracemalloc

import h5py
import numpy as np
import pytest
from search_photos import group_recall, make_collection, stem

from minicaffe.cli import run
from minicaffe.extract import main as extract_main
from minicaffe.similarity import (
    ANNIndex,
    FeatureFile,
    QueryEncoder,
    duplicate_groups,
    l2_normalize,
    near_duplicates,
    open_features,
    recall_at_k,
    search,
    search_rows,
)
from minicaffe.tools.search import main

#: a cosine between those of the photos' own copies and of unrelated photos (both ranges: docs/search.md)
DUP_THRESHOLD = 0.6


def _write_h5(path, x, paths=None, name="pool"):
    with h5py.File(path, "w") as f:
        f.create_group("features").create_dataset(name, data=x, chunks=(min(len(x), 64), x.shape[1]))
        f.create_dataset("paths", data=np.asarray(paths or [f"img{i}.jpg" for i in range(len(x))], dtype=object),
                         dtype=h5py.string_dtype())
    return path


def _clustered(n, d, seed, clusters=50):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d)).astype(np.float32)
    return np.maximum(c[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32), 0)


# ---------------------------------------------------------------------------------- exact search
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_exact_matches_sklearn(chunk):
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 24)).astype(np.float32)
    q = rng.standard_normal((9, 24)).astype(np.float32) * 5.0      # scale must not matter
    x0 = x.copy()
    s, i = search(x, q, 6, chunk_rows=chunk)
    assert (x == x0).all(), "search changed the caller's array"
    d, j = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(x).kneighbors(q)
    bad = np.argwhere(i != j)
    assert not len(bad), (f"chunk {chunk}: rows differ from sklearn at {bad[:5].tolist()}: "
                          f"{i[bad[0][0]]} vs {j[bad[0][0]]}")
    err = np.abs(s - (1 - d)).max()
    assert err <= 1e-5, f"chunk {chunk}: max abs score error {err:.2e} vs sklearn's 1 - cosine distance"
    assert (np.diff(s, axis=1) <= 0).all(), "scores not in descending order"


def test_rows_exclude_themselves_and_pad():
    x = _clustered(40, 8, 1)
    _, i = search_rows(x, [0, 39], k=5, chunk_rows=9)
    assert (i != np.array([[0], [39]])).all(), f"a row is its own neighbour: {i}"
    s2, i2 = search(x, x[[0, 39]], k=6)
    assert (i2[:, 0] == [0, 39]).all() and np.abs(s2[:, 0] - 1).max() <= 1e-5, f"self match: {i2[:, 0]}, {s2[:, 0]}"
    s3, i3 = search(x[:3], x[:1], k=5)        # more neighbours asked than rows: padded
    assert i3[0].tolist()[3:] == [-1, -1] and np.isneginf(s3[0, 3:]).all(), (i3, s3)


def test_zero_rows_score_zero():
    x = np.zeros((4, 5), np.float32)
    x[1] = 1.0
    s, i = search(x, x[1:2], 4)
    assert i[0, 0] == 1 and abs(s[0, 0] - 1) <= 1e-6 and np.abs(s[0, 1:]).max() == 0, (s, i)


def test_near_duplicates_exact_equals_full_matrix():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((150, 16)).astype(np.float32)
    x[100:110] = x[:10] + 0.05 * rng.standard_normal((10, 16)).astype(np.float32)   # planted duplicates
    x[120] = x[0] * 3                                                                # a scaled copy
    xn = l2_normalize(x)
    sim = xn @ xn.T
    for thr in (0.9, 0.5):
        want = {(a, b) for a, b in zip(*np.nonzero(np.triu(sim >= thr, 1)))}
        for chunk in (1, 13, 500):
            pairs, scores = near_duplicates(x, thr, chunk_rows=chunk)
            got = {tuple(p) for p in pairs.tolist()}
            assert got == want, (f"threshold {thr}, chunk {chunk}: missing {sorted(want - got)[:5]}, "
                                 f"extra {sorted(got - want)[:5]}")
            err = np.abs(scores - sim[pairs[:, 0], pairs[:, 1]]).max()
            assert err <= 1e-5, f"pair scores off by {err:.2e}"
            assert (np.diff(scores) <= 0).all()
    groups = duplicate_groups(near_duplicates(x, 0.9)[0])
    assert [0, 100, 120] in groups and len(groups) == 10, groups
    try:
        import faiss  # noqa: F401
    except ImportError:
        return
    idx = ANNIndex.build(x, "faiss-ivf")          # 3 cells, all visited: must equal exact
    pa, sa = near_duplicates(x, 0.9, index=idx, k=5)
    pe, se = near_duplicates(x, 0.9)
    assert pa.tolist() == pe.tolist() and np.abs(sa - se).max() <= 1e-5, (pa.tolist(), pe.tolist())


def test_streaming_peak_memory_is_bounded(tmp_path):
    """A 20000 x 256 file (20 MB) searched in chunks of 500 rows (0.5 MB) allocates a few chunks' worth."""
    x = _clustered(20000, 256, 3)
    path = _write_h5(str(tmp_path / "f.h5"), x)
    size = x.nbytes
    q = x[[5, 17000]] + 0.01
    small = _write_h5(str(tmp_path / "small.h5"), x[:4000])   # the self-join is quadratic: 4000 rows keep it fast
    del x
    peaks = {}
    with open_features(path) as ff:
        for chunk in (500, 20000):
            tracemalloc.start()
            _, i = search(ff, q, 10, chunk_rows=chunk)
            peaks[chunk] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert i[:, 0].tolist() == [5, 17000], i[:, 0]
    with open_features(small) as ff:
        tracemalloc.start()
        near_duplicates(ff, 0.999, chunk_rows=500)
        peaks["dups"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # a chunk read + its normalised copy + the (queries, chunk) scores; near_duplicates also holds
    # a 500-row query block; the whole-file chunk proves that the measure sees the reads
    chunk_bytes = 500 * 256 * 4
    assert peaks[500] < 4 * chunk_bytes, f"peak {peaks[500] / 1e6:.2f} MB with 0.5 MB chunks; file {size / 1e6:.1f} MB"
    assert peaks["dups"] < 8 * chunk_bytes, (f"near_duplicates peak {peaks['dups'] / 1e6:.2f} MB; "
                                             f"file {size / 1e6:.1f} MB")
    assert peaks[20000] > size, f"whole-file chunk peaked at {peaks[20000] / 1e6:.1f} MB < file {size / 1e6:.1f} MB"


def test_layers_and_npz(tmp_path):
    """Files with several layers need --layer (dataset, blob or requested alias); .npz files work too."""
    x, y = _clustered(30, 6, 6), _clustered(30, 9, 7)
    meta = {"layer_info": {"fc6": {"blob": "fc6", "pre_relu": False, "requested": "decaf6"},
                           "fc7.pre": {"blob": "fc7", "pre_relu": True, "requested": "fc7.pre"}}}
    h5 = str(tmp_path / "two.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("features/fc6", data=x)
        f.create_dataset("features/fc7.pre", data=y)
        f.attrs["run"] = json.dumps(meta)
    with pytest.raises(Exception, match="several layers"):
        open_features(h5)
    for name, want in (("decaf6", "fc6"), ("fc6", "fc6"), ("fc7.pre", "fc7.pre")):
        with open_features(h5, name) as ff:
            assert ff.dataset == want and ff.paths[0] == "row 0", (name, ff.dataset)
    npz = str(tmp_path / "one.npz")
    np.savez(npz, **{"features/fc6": x, "paths": np.asarray([f"p{i}" for i in range(30)]),
                     "meta": np.asarray(json.dumps(meta))})
    with open_features(npz) as ff, open_features(h5, "decaf6") as fh:
        a, b = search_rows(ff, [4], 5), search_rows(fh, [4], 5)
        assert ff.row_of("p4") == 4 and (a[1] == b[1]).all() and np.abs(a[0] - b[0]).max() == 0, (a, b)


# ---------------------------------------------------------------------------------- approximate
@pytest.mark.parametrize("kind", ["faiss-ivf", "faiss-hnsw"])
def test_ann_recall_and_save_load(kind, tmp_path):
    pytest.importorskip("faiss")
    x = _clustered(4000, 32, 4)
    q = _clustered(50, 32, 5)
    _, exact = search(x, q, 10)
    idx = ANNIndex.build(x, kind, chunk_rows=700, seed=0)
    _, approx = idx.search(q, 10)
    r = recall_at_k(approx, exact)
    assert r >= 0.9, f"{kind}: recall@10 {r:.3f} < 0.9 with params {idx.params}"
    s, resc = idx.search_rescored(x, q, 10)
    s_ex, _ = search(x, q, 10)
    found = resc == exact
    err = np.abs(s[found] - s_ex[found]).max()
    assert err <= 1e-5, f"{kind}: re-scored scores off by {err:.2e}"
    ff_path = _write_h5(str(tmp_path / "f.h5"), x)
    with open_features(ff_path) as ff:
        idx.save(str(tmp_path / "i.idx"), ff)
        again = ANNIndex.load(str(tmp_path / "i.idx"), ff)
    assert (again.search(q, 10)[1] == approx).all(), f"{kind}: a reloaded index answers differently"
    other = FeatureFile("other.h5", "pool", x[:10], [], {})
    with pytest.raises(Exception, match="rebuild it"):
        ANNIndex.load(str(tmp_path / "i.idx"), other)


# ---------------------------------------------------------------------------------- real photos
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    pytest.importorskip("skimage.data")      # the sample photos; only the photo tests need it
    root = tmp_path_factory.mktemp("search")
    group = make_collection(str(root / "coll"), str(root / "queries"))
    h5 = str(root / "coll.h5")
    rc = run(extract_main, [str(root / "coll"), "-o", h5, "--workers", "0", "-q"])   # EfficientNet-Lite0
    assert rc == 0, "extract failed"
    return {"root": root, "h5": h5, "group": group}


def _groups(ff, group):
    return np.asarray([group[os.path.basename(p)] for p in ff.paths])


def test_own_copies_outrank_every_other_photo(photos):
    with open_features(photos["h5"]) as ff:
        n = len(ff)
        s, j = search_rows(ff, np.arange(n), k=n - 1)
        g = _groups(ff, photos["group"])
        worst = []
        for i in range(n):
            same = g[j[i]] == g[i]
            low_mate, high_other = s[i][same].min(), s[i][~same].max()
            worst.append((low_mate - high_other, ff.paths[i], low_mate, high_other))
            assert same[:3].all(), (f"{ff.paths[i]}: its 3 copies are not its top 3: "
                                    f"{[(ff.paths[r], round(float(v), 3)) for r, v in zip(j[i][:5], s[i][:5])]}")
        margin = min(worst)
        assert margin[0] > 0, f"{margin[1]}: a copy scores {margin[2]:.3f} below another photo's {margin[3]:.3f}"
        assert group_recall(ff.paths, j[:, :3], photos["group"]) == 1.0


def test_duplicate_report_finds_the_photo_groups(photos):
    with open_features(photos["h5"]) as ff:
        pairs, scores = near_duplicates(ff, DUP_THRESHOLD)
        groups = duplicate_groups(pairs)
        g = _groups(ff, photos["group"])
    got = sorted(sorted(set(g[grp])) for grp in groups)
    assert [len(grp) for grp in groups] == [4] * 6 and got == [[s] for s in sorted(set(g))], (
        f"groups at cosine >= {DUP_THRESHOLD}: {[[os.path.basename(ff.paths[r]) for r in grp] for grp in groups]}")
    assert len(pairs) == 6 * 6 and scores.min() >= DUP_THRESHOLD


def test_query_images_use_the_files_model(photos):
    """A query that is a file of the collection reproduces its row; rotated, shrunk copies that
    were never extracted find their photo's four images first."""
    queries = sorted(os.listdir(photos["root"] / "queries"))
    with open_features(photos["h5"]) as ff:
        enc = QueryEncoder(ff)
        own = os.path.join(photos["root"], "coll", "chelsea_crop.png")
        f, ok = enc.encode([own])
        row = [os.path.basename(p) for p in ff.paths].index("chelsea_crop.png")
        ref = ff.read(row, row + 1)
        rel = np.abs(f - ref).max() / np.abs(ref).max()
        assert rel <= 1e-4, f"query features of {own} differ from its row: max rel err {rel:.2e}"
        f, ok = enc.encode([str(photos["root"] / "queries" / q) for q in queries])
        assert ok == list(range(len(queries)))
        s, j = search(ff, f, 4)
        g = _groups(ff, photos["group"])
    for q, jj, ss in zip(queries, j, s):
        want = stem(q).rsplit("_", 1)[0]
        assert (g[jj] == want).all(), f"{q}: top 4 {[(ff.paths[r], round(float(v), 3)) for r, v in zip(jj, ss)]}"


def test_weights_mismatch_is_one_error(photos, tmp_path):
    bad = str(tmp_path / "other.h5")
    shutil.copy(photos["h5"], bad)
    with h5py.File(bad, "a") as f:
        meta = json.loads(f.attrs["run"])
        meta["weights_sha1"] = "0" * 40
        f.attrs["run"] = json.dumps(meta)
    with open_features(bad) as ff, pytest.raises(Exception, match="SHA-1 0000"):
        QueryEncoder(ff)


# ---------------------------------------------------------------------------------- command line
def test_cli_rows_queries_duplicates_json(photos, capsys, tmp_path):
    h5 = photos["h5"]
    rc = run(main, [h5, "--row", "0", "-k", "3", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    with open(tmp_path / "r.json") as f:
        res = json.load(f)
    n0 = res["queries"][0]["neighbours"]
    assert len(n0) == 3 and all(n["row"] != 0 for n in n0) and res["method"] == "exact"
    assert n0[0]["path"] in out and f"{n0[0]['score']:.4f}" in out
    good = str(photos["root"] / "queries" / "coffee_rot.png")
    rc = run(main, [h5, "--query", str(tmp_path / "missing.jpg"), good, "-k", "2"])
    cap = capsys.readouterr()
    assert rc == 1, "a query image that cannot be read must give exit status 1"
    assert cap.err.count("minicaffe: error:") == 1 and "missing.jpg" in cap.err, cap.err
    assert "coffee_rot.png" in cap.out and "coffee" in cap.out.splitlines()[1], cap.out
    rc = run(main, [h5, "--duplicates", "--threshold", str(DUP_THRESHOLD)])
    out = capsys.readouterr().out
    assert rc == 0 and "36 pair(s) in 6 group(s)" in out, out


@pytest.mark.parametrize("argv, msg", [
    (["{h5}"], "nothing to search for"),
    (["{h5}", "--row", "99"], "row 99 out of range"),
    (["{h5}", "--row", "nope.png"], "neither a row number nor a path"),
    (["{h5}", "--row", "0", "--layer", "fc6"], "no layer 'fc6'"),
    (["{h5}", "--duplicates", "--threshold", "2"], "between -1 and 1"),
    (["{tmp}/none.h5", "--row", "0"], "no such features file"),
    (["{tmp}/junk.h5", "--row", "0"], "not a readable HDF5"),
])
def test_cli_bad_input_is_one_error_line(photos, capsys, tmp_path, argv, msg):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    argv = [a.format(h5=photos["h5"], tmp=tmp_path) for a in argv]
    rc = run(main, argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("minicaffe: error:") and msg in err and "Traceback" not in err, err


def test_cli_ann_builds_then_reuses_index(photos, capsys, tmp_path):
    pytest.importorskip("faiss")
    idx = str(tmp_path / "coll.ivf")
    answers = []
    for verb in ("built", "loaded", None):
        out = str(tmp_path / f"{verb}.json")
        ann = ["--ann", "faiss-ivf", "--index", idx] if verb else []
        rc = run(main, [photos["h5"], "--row", "1", "-k", "3", "--json", out, *ann])
        err = capsys.readouterr().err
        assert rc == 0 and (verb is None or verb in err), err
        with open(out) as f:
            answers.append(json.load(f)["queries"][0]["neighbours"])
    for got in answers[:2]:     # re-scored approximate answers equal the exact one
        assert [n["row"] for n in got] == [n["row"] for n in answers[2]], (got, answers[2])
        err = max(abs(a["score"] - b["score"]) for a, b in zip(got, answers[2]))
        assert err <= 1e-5, f"approximate scores differ from exact by {err:.2e}"


def test_cli_html_is_self_contained(photos, capsys, tmp_path):
    from html.parser import HTMLParser
    page = str(tmp_path / "s.html")
    q = str(photos["root"] / "queries" / "rocket_rot.png")
    rc = run(main, [photos["h5"], "--query", q, "-k", "4", "--duplicates", "--threshold", str(DUP_THRESHOLD),
                    "--html", page])
    assert rc == 0, capsys.readouterr().err

    class Srcs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])
    p = Srcs()
    with open(page, encoding="utf-8") as f:
        p.feed(f.read())
    # 1 query + 4 neighbours + 6 groups x 4 images
    assert len(p.srcs) == 1 + 4 + 24 and all(s.startswith("data:image/") for s in p.srcs), len(p.srcs)
    from minicaffe.html_report import browser_check, find_browser
    if find_browser() is None:
        print("no Chromium-family browser: the page was checked as text only", file=sys.stderr)
        return
    r = browser_check(page)
    if r["state"] == "missing" and r["returncode"] != 0:   # the browser did not start: no verdict on the page
        pytest.skip(f"browser did not start (exit {r['returncode']}): {r['stderr'].strip().splitlines()[-1:]}")
    assert (r["state"], r["loaded"], r["total"]) == ("ok", 29, 29), (r["state"], r["loaded"], r["total"],
                                                                     r["stderr"][-2000:])


def test_cli_progress_bar_on_large_files(tmp_path, capsys, monkeypatch):
    import minicaffe.tools.search as ms
    path = _write_h5(str(tmp_path / "f.h5"), _clustered(300, 8, 8))
    monkeypatch.setattr(ms, "PROGRESS_ROWS", 100)          # "large" = 100 rows here
    assert run(main, [path, "--row", "0", "--duplicates", "--chunk-rows", "50"]) == 0
    err = capsys.readouterr().err
    assert "search: 100%" in err and "duplicates: 100%" in err and "300/300" in err, err
    assert run(main, [path, "--row", "0", "--quiet"]) == 0
    assert "search" not in capsys.readouterr().err
