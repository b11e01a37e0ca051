"""``python -m minicaffe.search``: similar images and near-duplicates in a features file.

Opens a file written by ``python -m minicaffe.extract`` (HDF5 or .npz; any stored layer), treats
every row as an L2-normalised vector and ranks by cosine similarity (the dot product of
normalised rows). Exact search streams the HDF5 dataset in row chunks and keeps a running top-k,
so memory is bounded by ``chunk_rows`` and the number of queries, not by the file: a 1M x 4096
float32 file (16 GB) is searched without being loaded. Queries are rows of the file (``--row``)
or new images (``--query``), whose features are computed with the model, weights,
preprocessing, crop and layer recorded in the file (weights checked by SHA-1). The
near-duplicate report lists every pair above a cosine threshold (exact: a blocked self-join;
with an approximate index: among each row's k nearest) and joins the pairs into groups.
For large collections an approximate index (FAISS, the ``search`` extra) is built from the file
in chunks and saved beside it; approximate candidates are re-scored exactly from the file. It
does not extract features of the collection (``minicaffe.extract`` does) and does not train
anything on them; ``--html`` writes a self-contained page through :mod:`minicaffe.report`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from .cli import exit_with
from .errors import ImageError, MinicaffeError
from .runtime import auto_tune

#: bytes of feature rows read at once when no chunk size is given (bounds the streaming memory)
DEFAULT_CHUNK_BYTES = 64 << 20
#: query rows scored together against one chunk (bounds the (queries, chunk) score matrix)
QUERY_BLOCK = 1024
ANN_KINDS = ("faiss-ivf", "faiss-hnsw", "hnswlib")
#: files with at least this many rows get a progress bar (unless --quiet)
PROGRESS_ROWS = 100_000
#: most bytes of rows the IVF k-means trains on (a sample spread over the file)
TRAIN_BYTES = 1 << 30


class SearchError(MinicaffeError):
    """A features file, index or argument that search cannot use."""


# ---------------------------------------------------------------------------------- features
@dataclasses.dataclass
class FeatureFile:
    """One layer of a features file. ``rows``: (N, D) h5py dataset (read lazily) or ndarray.

    ``paths``: (N,) image paths in row order; ``meta``: the extraction run's metadata (model,
    weights, preprocessing, crop, layer_info); ``dataset``: the key under ``features/``.
    """
    path: str
    dataset: str
    rows: object
    paths: list
    meta: dict
    _h5: object = None

    def __len__(self):
        return int(self.rows.shape[0])

    @property
    def dim(self):
        return int(self.rows.shape[1])

    def read(self, i0, i1):
        """Rows [i0, i1) -> a new (i1 - i0, D) float32 array (only these rows are read from disk;
        never a view of in-memory rows, so callers may normalise it in place)."""
        if isinstance(self.rows, np.ndarray):
            return np.array(self.rows[i0:i1], dtype=np.float32)
        return np.asarray(self.rows[i0:i1], dtype=np.float32)

    def take(self, idx):
        """idx: (M,) row indices in any order, repeats allowed -> (M, D) float32."""
        idx = np.asarray(idx, np.int64)
        uniq, inv = np.unique(idx, return_inverse=True)   # h5py wants increasing indices
        if len(uniq) == 0:
            return np.empty((0, self.dim), np.float32)
        return np.asarray(self.rows[uniq], np.float32)[inv]

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def row_of(self, token):
        """A ``--row`` value: an integer row or a path stored in the file -> row index."""
        s = str(token).strip()
        if s.lstrip("-").isdigit():
            i = int(s)
            if not -len(self) <= i < len(self):
                raise SearchError(f"{self.path}: row {i} out of range (the file has {len(self)} rows)")
            return i % len(self)
        if not hasattr(self, "_by_path"):
            self._by_path = {p: i for i, p in enumerate(self.paths)}
        for cand in (s, os.path.normpath(s)):
            if cand in self._by_path:
                return self._by_path[cand]
        raise SearchError(f"{self.path}: {s!r} is neither a row number nor a path stored in the file")


def _layer_names(meta, name):
    info = meta.get("layer_info", {}).get(name, {})
    names = {name, name.replace("__", "/")}
    for key in ("blob", "requested"):
        if info.get(key):
            names.add(str(info[key]) + (".pre" if info.get("pre_relu") and key == "blob" else ""))
    return names


def _pick_layer(path, names, meta, layer):
    if layer is None:
        if len(names) == 1:
            return names[0]
        raise SearchError(f"{path}: holds several layers ({', '.join(names)}); choose one with --layer")
    for n in names:
        if layer in _layer_names(meta, n):
            return n
    raise SearchError(f"{path}: no layer {layer!r} (layers: {', '.join(names)})")


def open_features(path, layer=None):
    """A features file (.h5 or .npz from ``minicaffe.extract``) -> :class:`FeatureFile`.

    ``layer``: dataset name, blob name or the alias it was requested by (``features``, ``decaf6``);
    None when the file holds one layer. HDF5 rows stay on disk; an .npz is loaded whole (NumPy
    cannot map a member of a zip archive).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SearchError(f"{path}: no such features file")
    if path.lower().endswith(".npz"):
        try:
            z = np.load(path, allow_pickle=False)
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            names = [k.split("/", 1)[1] for k in z.files if k.startswith("features/")]
            paths = [str(p) for p in z["paths"]] if "paths" in z.files else []
        except (OSError, ValueError, KeyError) as e:
            raise SearchError(f"{path}: not a readable features .npz ({e})") from None
        if not names:
            raise SearchError(f"{path}: no features/ arrays (was it written by minicaffe.extract?)")
        name = _pick_layer(path, names, meta, layer)
        rows = z["features/" + name]
        ff = FeatureFile(path, name, rows, paths, meta)
    else:
        import h5py
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise SearchError(f"{path}: not a readable HDF5 features file ({e})") from None
        try:
            if "features" not in f or not isinstance(f["features"], h5py.Group) or not len(f["features"]):
                raise SearchError(f"{path}: no 'features' group (was it written by minicaffe.extract?)")
            meta = json.loads(f.attrs["run"]) if "run" in f.attrs else {}
            names = list(f["features"])
            name = _pick_layer(path, names, meta, layer)
            rows = f["features"][name]
            paths = list(f["paths"].asstr()[()]) if "paths" in f else []
        except BaseException:
            f.close()
            raise
        ff = FeatureFile(path, name, rows, paths, meta, f)
    if len(ff.rows.shape) != 2:
        ff.close()
        raise SearchError(f"{path}: features/{ff.dataset} has shape {ff.rows.shape}, expected (N, D)")
    if ff.paths and len(ff.paths) != len(ff):
        ff.close()
        raise SearchError(f"{path}: {len(ff.paths)} paths for {len(ff)} feature rows")
    if not ff.paths:
        ff.paths = [f"row {i}" for i in range(len(ff))]
    return ff


def l2_normalize(x, inplace=False):
    """x: (N, D) -> (N, D) float32 rows of unit length (all-zero rows stay zero, so they score 0).

    ``inplace``: divide a float32 ``x`` in place (a chunk just read from disk needs no copy)."""
    x = np.asarray(x, np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    n = np.maximum(n, np.float32(1e-30))[:, None]
    if inplace:
        x /= n
        return x
    return x / n


def default_chunk_rows(dim):
    return max(1, DEFAULT_CHUNK_BYTES // (4 * max(1, dim)))


def _as_rows(features):
    return features if isinstance(features, FeatureFile) else FeatureFile("<array>", "", np.asarray(features), [], {})


# ---------------------------------------------------------------------------------- exact search
def _merge_topk(best_s, best_i, s, i0, k):
    """Running top-k: best (m, <=k) merged with a chunk's scores s (m, c) of rows i0..i0+c."""
    m, c = s.shape
    cand_s = np.concatenate([best_s, s], axis=1)
    cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(i0, i0 + c, dtype=np.int64), (m, c))], axis=1)
    if cand_s.shape[1] > k:
        part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        cand_s = np.take_along_axis(cand_s, part, axis=1)
        cand_i = np.take_along_axis(cand_i, part, axis=1)
    return cand_s, cand_i


def _sort_topk(s, i):
    """Order each row by score descending, ties by row index ascending."""
    order = np.lexsort((i, -s), axis=1) if s.size else np.zeros(s.shape, np.int64)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def search(features, queries, k=10, chunk_rows=None, exclude=None, progress=None):
    """Exact cosine top-k. features: FeatureFile or (N, D); queries: (M, D) (any scale).

    Streams ``features`` in chunks of ``chunk_rows`` rows (default ~64 MiB), so peak memory is
    O(chunk_rows * D + M * (chunk_rows + k)). ``exclude``: (M,) row index to leave out per query
    (-1: none), e.g. the query's own row. Returns (scores (M, k) float32 descending, rows (M, k)
    int64); fewer than k rows in the collection pad with score -inf and row -1.
    """
    ff = _as_rows(features)
    n, d = len(ff), ff.dim
    q = l2_normalize(queries)
    if q.ndim != 2 or q.shape[1] != d:
        raise SearchError(f"{ff.path}: queries have {q.shape[-1]} features, the file's rows have {d}")
    m = q.shape[0]
    k = int(k)
    if k < 1:
        raise SearchError("k must be >= 1")
    chunk_rows = int(chunk_rows or default_chunk_rows(d))
    excl = np.full(m, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(m)
    best_s = np.empty((m, 0), np.float32)
    best_i = np.empty((m, 0), np.int64)
    for i0 in range(0, n, chunk_rows):
        i1 = min(n, i0 + chunk_rows)
        block = l2_normalize(ff.read(i0, i1), inplace=True)
        s = q @ block.T                                              # (M, c) cosines
        hit = (excl >= i0) & (excl < i1)
        s[np.nonzero(hit)[0], excl[hit] - i0] = -np.inf
        best_s, best_i = _merge_topk(best_s, best_i, s, i0, k)
        del block, s        # free this chunk before the next read: one chunk in memory at a time
        if progress:
            progress(i1)
    best_s, best_i = _sort_topk(best_s, best_i)
    if best_s.shape[1] < k:
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    best_i = np.where(np.isfinite(best_s), best_i, -1)
    return best_s.astype(np.float32), best_i


def search_rows(features, rows, k=10, chunk_rows=None, index=None):
    """Neighbours of rows of the collection itself (each row's own row excluded) -> (scores, rows)."""
    ff = _as_rows(features)
    rows = np.asarray(rows, np.int64).reshape(-1)
    q = ff.take(rows)
    if index is not None:
        return index.search_rescored(ff, q, k, exclude=rows)
    return search(ff, q, k, chunk_rows, exclude=rows)


# ---------------------------------------------------------------------------------- duplicates
def near_duplicates(features, threshold=0.9, chunk_rows=None, index=None, k=10, progress=None):
    """Pairs of rows whose cosine is >= threshold -> (pairs (P, 2) int64 with i < j, scores (P,)).

    Exact (``index`` None): a blocked self-join over the upper triangle, every pair found, chunks
    read from the file so memory stays bounded; O(N^2 D) work. With an approximate ``index``:
    only pairs among each row's ``k`` nearest neighbours (O(N k) pairs at most), scored by the
    index (exact dot products of the stored normalised rows). Sorted by score
    descending, then (i, j).
    """
    ff = _as_rows(features)
    n, d = len(ff), ff.dim
    thr = np.float32(threshold)
    out_p, out_s = [], []
    if index is not None:
        for q0 in range(0, n, QUERY_BLOCK):
            q1 = min(n, q0 + QUERY_BLOCK)
            # the Flat-storing indexes score candidates with exact dot products: no re-read from the
            # file, whose random row reads would cost a whole HDF5 chunk each
            s, j = index.search(ff.read(q0, q1), k + 1)
            i = np.broadcast_to(np.arange(q0, q1)[:, None], j.shape)
            keep = (s >= thr) & (j >= 0) & (j != i)
            a, b = i[keep], j[keep]
            out_p.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1))
            out_s.append(s[keep])
            if progress:
                progress(q1)
    else:
        chunk_rows = int(chunk_rows or default_chunk_rows(d))
        qb = max(1, min(QUERY_BLOCK, chunk_rows))
        for q0 in range(0, n, qb):
            q1 = min(n, q0 + qb)
            q = l2_normalize(ff.read(q0, q1), inplace=True)
            for c0 in range(q0, n, chunk_rows):          # upper triangle: rows from q0 on
                c1 = min(n, c0 + chunk_rows)
                s = q @ l2_normalize(ff.read(c0, c1), inplace=True).T
                ii, jj = np.nonzero(s >= thr)
                gi, gj = ii + q0, jj + c0
                keep = gj > gi
                out_p.append(np.stack([gi[keep], gj[keep]], 1))
                out_s.append(s[ii[keep], jj[keep]])
                del s           # one chunk's scores at a time
            if progress:
                progress(q1)
    pairs = np.concatenate(out_p).astype(np.int64) if out_p else np.empty((0, 2), np.int64)
    scores = np.concatenate(out_s).astype(np.float32) if out_s else np.empty(0, np.float32)
    if len(pairs):
        pairs, first = np.unique(pairs, axis=0, return_index=True)   # an ANN pair is found from both ends
        scores = scores[first]
        order = np.lexsort((pairs[:, 1], pairs[:, 0], -scores))
        pairs, scores = pairs[order], scores[order]
    return pairs, scores


def duplicate_groups(pairs):
    """pairs: (P, 2) -> list of groups (sorted row lists) joined through any pair; largest first."""
    parent = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in np.asarray(pairs, np.int64).reshape(-1, 2):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups = {}
    for a in list(parent):
        groups.setdefault(find(a), []).append(a)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


# ---------------------------------------------------------------------------------- approximate
class ANNIndex:
    """An approximate inner-product index over L2-normalised rows (FAISS or hnswlib).

    ``kind``: ``faiss-ivf`` (inverted lists, ``nlist`` cells, ``nprobe`` visited),
    ``faiss-hnsw`` or ``hnswlib`` (HNSW graphs, ``M`` links, ``ef`` search breadth). Built from a
    features file in chunks (:meth:`build`); the index itself holds the vectors in memory.
    """

    def __init__(self, kind, dim, n=0, params=None, impl=None):
        if kind not in ANN_KINDS:
            raise SearchError(f"unknown approximate index {kind!r} (choose from {', '.join(ANN_KINDS)})")
        self.kind, self.dim, self.n = kind, int(dim), int(n)
        self.params = dict(params or {})
        self.impl = impl

    @staticmethod
    def _faiss():
        try:
            import faiss
        except ImportError:
            raise SearchError("approximate search needs FAISS: pip install 'minicaffe[search]' "
                              "(faiss-cpu), or search exactly without --ann") from None
        return faiss

    @staticmethod
    def _hnswlib():
        try:
            import hnswlib
        except ImportError:
            raise SearchError("--ann hnswlib needs the package hnswlib (pip install hnswlib)") from None
        return hnswlib

    @classmethod
    def build(cls, features, kind="faiss-ivf", chunk_rows=None, seed=0, progress=None, **params):
        """features: FeatureFile or (N, D) -> a filled index (rows added in chunks, normalised)."""
        ff = _as_rows(features)
        n, d = len(ff), ff.dim
        chunk_rows = int(chunk_rows or default_chunk_rows(d))
        idx = cls(kind, d, 0, params)
        if kind == "faiss-ivf":
            faiss = cls._faiss()
            nlist = int(params.get("nlist") or max(1, min(65536, int(4 * np.sqrt(max(n, 1))))))
            sample = min(n, 64 * nlist, TRAIN_BYTES // (4 * d))
            nlist = min(nlist, max(1, sample // 39))  # FAISS wants >= 39 training points per cell
            idx.params.update(nlist=nlist, nprobe=int(params.get("nprobe") or min(nlist, max(16, nlist // 32))))
            if nlist < 2:                      # too few rows to cluster: one cell is a flat (exact) index
                impl = faiss.IndexFlatIP(d)
                idx.params.update(nlist=1, nprobe=1)
            else:
                impl = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                impl.train(_training_sample(ff, sample, chunk_rows, seed))
                impl.nprobe = idx.params["nprobe"]
        elif kind == "faiss-hnsw":
            faiss = cls._faiss()
            idx.params.update(M=int(params.get("M") or 32), ef_construction=int(params.get("ef_construction") or 80),
                              ef=int(params.get("ef") or 128))
            impl = faiss.IndexHNSWFlat(d, idx.params["M"], faiss.METRIC_INNER_PRODUCT)
            impl.hnsw.efConstruction = idx.params["ef_construction"]
            impl.hnsw.efSearch = idx.params["ef"]
        else:
            hnswlib = cls._hnswlib()
            idx.params.update(M=int(params.get("M") or 16), ef_construction=int(params.get("ef_construction") or 100),
                              ef=int(params.get("ef") or 128))
            impl = hnswlib.Index(space="ip", dim=d)
            impl.init_index(max_elements=max(1, n), M=idx.params["M"], ef_construction=idx.params["ef_construction"],
                            random_seed=seed)
            impl.set_ef(idx.params["ef"])
        for i0 in range(0, n, chunk_rows):
            i1 = min(n, i0 + chunk_rows)
            x = l2_normalize(ff.read(i0, i1), inplace=True)
            if kind == "hnswlib":
                impl.add_items(x, np.arange(i0, i1))
            else:
                impl.add(x)
            if progress:
                progress(i1)
        idx.impl, idx.n = impl, n
        return idx

    def set_search_breadth(self, value):
        """nprobe (faiss-ivf) or ef (HNSW): larger is slower and closer to exact."""
        v = int(value)
        if self.kind == "faiss-ivf":
            self.params["nprobe"] = min(v, self.params.get("nlist", v))
            if hasattr(self.impl, "nprobe"):
                self.impl.nprobe = self.params["nprobe"]
        elif self.kind == "faiss-hnsw":
            self.params["ef"] = v
            self.impl.hnsw.efSearch = v
        else:
            self.params["ef"] = v
            self.impl.set_ef(v)

    def search(self, queries, k):
        """queries: (M, D) -> approximate (scores (M, k), rows (M, k)); missing hits are row -1."""
        q = l2_normalize(queries)
        k_eff = min(int(k), self.n)
        if k_eff < 1:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.kind == "hnswlib":
            self.impl.set_ef(max(self.params["ef"], k_eff))
            labels, dist = self.impl.knn_query(q, k=k_eff)
            s, i = 1.0 - dist, labels.astype(np.int64)         # hnswlib's "ip" distance is 1 - dot
        else:
            s, i = self.impl.search(q, k_eff)
            i = i.astype(np.int64)
        s = np.where(i >= 0, s, -np.inf).astype(np.float32)
        if k_eff < k:
            s = np.pad(s, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, k - k_eff)), constant_values=-1)
        return s, i

    def search_rescored(self, features, queries, k, exclude=None, overfetch=2):
        """Approximate candidates (``overfetch`` * k + 1), re-scored exactly from the file's rows, best k kept."""
        ff = _as_rows(features)
        q = l2_normalize(queries)
        _, cand = self.search(q, overfetch * int(k) + 1)
        m = len(q)
        valid = cand >= 0
        if exclude is not None:
            valid &= cand != np.asarray(exclude, np.int64).reshape(m, 1)
        uniq, inv = np.unique(np.where(valid, cand, 0), return_inverse=True)
        rows = l2_normalize(ff.take(uniq)) if len(uniq) else np.empty((0, ff.dim), np.float32)
        s = np.einsum("md,mkd->mk", q, rows[inv.reshape(cand.shape)]) if len(uniq) else np.zeros(cand.shape)
        s = np.where(valid, s, -np.inf).astype(np.float32)
        s, cand = _sort_topk(s, np.where(valid, cand, -1))
        s, cand = s[:, :k], cand[:, :k]
        if s.shape[1] < k:
            s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=-np.inf)
            cand = np.pad(cand, ((0, 0), (0, k - cand.shape[1])), constant_values=-1)
        return s, np.where(np.isfinite(s), cand, -1)

    # ---- persistence: the index file plus a JSON sidecar that ties it to its features file
    def save(self, path, features=None):
        if self.kind == "hnswlib":
            self.impl.save_index(path)
        else:
            self._faiss().write_index(self.impl, path)
        info = {"kind": self.kind, "dim": self.dim, "n": self.n, "params": self.params}
        if features is not None:
            info.update(features=os.path.abspath(features.path), dataset=features.dataset)
        with open(path + ".json", "w") as f:
            json.dump(info, f, indent=1)

    @classmethod
    def load(cls, path, features=None):
        try:
            with open(path + ".json") as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise SearchError(f"{path}.json: cannot read the index description ({e})") from None
        idx = cls(info["kind"], info["dim"], info["n"], info.get("params"))
        if features is not None:
            ff = features
            if (info["n"], info["dim"]) != (len(ff), ff.dim) or info.get("dataset", ff.dataset) != ff.dataset:
                raise SearchError(f"{path}: built for {info['n']} x {info['dim']} rows of "
                                  f"{info.get('dataset')!r}, but {ff.path} has {len(ff)} x {ff.dim} of "
                                  f"{ff.dataset!r}; rebuild it (delete the file)")
        try:
            if idx.kind == "hnswlib":
                impl = cls._hnswlib().Index(space="ip", dim=idx.dim)
                impl.load_index(path, max_elements=max(1, idx.n))
            else:
                impl = cls._faiss().read_index(path)
        except (RuntimeError, OSError) as e:
            raise SearchError(f"{path}: cannot read the index ({e})") from None
        idx.impl = impl
        idx.set_search_breadth(idx.params.get("nprobe") if idx.kind == "faiss-ivf" else idx.params.get("ef", 128))
        return idx


def _training_sample(ff, size, chunk_rows, seed):
    """About ``size`` rows spread over the whole file (one pass, chunk by chunk) -> normalised float32."""
    n = len(ff)
    rng = np.random.default_rng(seed)
    if size >= n:
        return l2_normalize(np.concatenate([ff.read(i, min(n, i + chunk_rows)) for i in range(0, n, chunk_rows)]))
    keep = np.sort(rng.choice(n, size, replace=False))
    parts = []
    for i0 in range(0, n, chunk_rows):
        sel = keep[(keep >= i0) & (keep < i0 + chunk_rows)]
        if len(sel):
            parts.append(ff.read(i0, min(n, i0 + chunk_rows))[sel - i0])
    return l2_normalize(np.concatenate(parts))


def recall_at_k(approx_rows, exact_rows):
    """(M, k) approximate and exact neighbour rows -> mean fraction of the exact k found."""
    a, e = np.asarray(approx_rows), np.asarray(exact_rows)
    hits = [len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, int((y >= 0).sum())) for x, y in zip(a, e)]
    return float(np.mean(hits)) if hits else float("nan")


# ---------------------------------------------------------------------------------- query images
class QueryEncoder:
    """Features of new images exactly as the features file's were made.

    Rebuilds the run recorded in the file: the net (registered model or prototxt) with the same
    weights (checked by SHA-1), the preprocessing, the crop mode and the layer (or concatenation).
    """

    def __init__(self, ff, backend="cpu", weights=None):
        from .features import FeatureExtractor, resolve_layers
        from .models import MODELS
        from .preprocess import Preprocessing
        meta = ff.meta
        if not meta.get("preprocessing") or not meta.get("layer_info"):
            raise SearchError(f"{ff.path}: has no record of the extraction run (model, preprocessing); "
                              "query by --row, or re-extract with python -m minicaffe.extract")
        pre = json.loads(meta["preprocessing"]) if isinstance(meta["preprocessing"], str) else meta["preprocessing"]
        known = {f.name for f in dataclasses.fields(Preprocessing)}
        spec = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items() if k in known})
        model = meta.get("model", "")
        want_sha1 = meta.get("weights_sha1") or ""
        w = weights or meta.get("weights") or None
        if w and not os.path.isfile(w):
            w = None
        from .net import Net
        if model in MODELS:
            net = MODELS[model].load(backend, weights=w) if w else MODELS[model].load(backend)
        else:
            proto = meta.get("prototxt", "")
            if not (proto and os.path.isfile(proto) and w):
                raise SearchError(f"{ff.path}: made with prototxt {proto or '?'} and weights "
                                  f"{meta.get('weights') or '?'}, which are not here; pass --weights")
            net = Net(proto, w, backend=backend)
        if want_sha1 and net.weights_sha1 and net.weights_sha1 != want_sha1:
            raise SearchError(f"{ff.path}: features were made with weights of SHA-1 {want_sha1}, but "
                              f"{net.weights_path} has {net.weights_sha1}; pass the right --weights")
        info = meta["layer_info"].get(ff.dataset)
        if info is None:
            raise SearchError(f"{ff.path}: no record of how features/{ff.dataset} was made")
        if ff.dataset == "concat":
            names, concat = list(info["layers"]), True
        else:
            names, concat = [info["blob"] + (".pre" if info.get("pre_relu") else "")], False
        layers = resolve_layers(net, names)
        self.fx = FeatureExtractor(net, spec, layers, crop=meta.get("crop", "center"), concat=concat)
        self.spec, self.dataset = spec, ff.dataset
        self.description = f"{model or os.path.basename(meta.get('prototxt', ''))}, {ff.dataset}"

    def encode(self, images, batch=8, on_error=None):
        """images: paths or (H, W, 3) RGB arrays -> ((M', D) float32, indices of the images that loaded)."""
        from .preprocess import load_resized
        feats, ok = [], []
        for b0 in range(0, len(images), batch):
            imgs, idx = [], []
            for i in range(b0, min(len(images), b0 + batch)):
                try:
                    imgs.append(load_resized(images[i], self.spec))
                    idx.append(i)
                except ImageError as e:
                    if on_error is None:
                        raise
                    on_error(images[i], e)
            if imgs:
                feats.append(self.fx.features(imgs)[self.dataset])
                ok.extend(idx)
        d = sum(dd for dd, _ in self.fx.feature_dims().values())
        return (np.concatenate(feats) if feats else np.empty((0, d), np.float32)), ok


# ---------------------------------------------------------------------------------- command line
def resolve_image(path, features_path):
    """A path stored in a features file -> an existing file: as stored (relative to the current
    folder, as extract was given it), else relative to the features file's folder; None if neither."""
    if os.path.isfile(path):
        return path
    alt = os.path.join(os.path.dirname(os.path.abspath(features_path)), path)
    return alt if os.path.isfile(alt) else None


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.search", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find similar images (cosine on L2-normalised features) or near-duplicates in a features "
                    "file written by python -m minicaffe.extract.",
        epilog="examples:\n"
               "  python -m minicaffe.search features.h5 --query cat.jpg -k 5 --html cat.html\n"
               "  python -m minicaffe.search features.h5 --row 0 --row photos/dog.jpg\n"
               "  python -m minicaffe.search features.h5 --duplicates --threshold 0.9 --html dups.html\n"
               "  python -m minicaffe.search big.h5 --query cat.jpg --ann faiss-ivf --index big.ivf\n")
    p.add_argument("features", help="features file (.h5 or .npz) from python -m minicaffe.extract")
    what = p.add_argument_group("what to search for (one or more)")
    what.add_argument("-q", "--query", nargs="+", default=[], metavar="IMAGE",
                      help="image files; their features are computed with the file's model, weights and layer")
    what.add_argument("--row", action="append", default=[], metavar="ROW",
                      help="a row of the file (number, or a path stored in it); repeatable; the row itself is "
                           "left out of its neighbours")
    what.add_argument("--duplicates", action="store_true",
                      help="list every pair of rows with cosine >= --threshold, joined into groups")
    p.add_argument("-k", "--top", type=int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--threshold", type=float, default=0.9, help="cosine for --duplicates (default 0.9)")
    p.add_argument("--layer", help="which stored layer (dataset, blob or alias; default: the only one)")
    p.add_argument("--chunk-rows", type=int, help="rows read from the file at once (default: ~64 MiB worth)")
    a = p.add_argument_group("approximate search (large collections; needs the 'search' extra)")
    a.add_argument("--ann", choices=ANN_KINDS, help="use an approximate index of this kind (default: exact)")
    a.add_argument("--index", help="index file: loaded if it exists, else built and saved there "
                                   "(default: FEATURES.<kind>)")
    a.add_argument("--breadth", type=int, help="nprobe (faiss-ivf) or ef (HNSW) at query time")
    m = p.add_argument_group("query images")
    m.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"))
    m.add_argument("--weights", help="the weights the file was made with, if they moved (checked by SHA-1)")
    m.add_argument("--batch", type=int, default=8, help="query images per forward pass (default 8)")
    o = p.add_argument_group("output")
    o.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page with thumbnails")
    o.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    o.add_argument("--thumb", type=int, default=160, help="thumbnail side in the HTML, pixels (default 160)")
    o.add_argument("--quiet", action="store_true", help="no progress bar (shown for files of 100k rows or more)")
    return p


def _get_index(args, ff):
    if not args.ann:
        return None
    path = args.index or f"{ff.path}.{args.ann}"
    if os.path.exists(path):
        idx = ANNIndex.load(path, ff)
        if idx.kind != args.ann:
            raise SearchError(f"{path}: is a {idx.kind} index, not {args.ann}")
        print(f"minicaffe: loaded {idx.kind} index {path}", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        idx = ANNIndex.build(ff, args.ann, args.chunk_rows)
        idx.save(path, ff)
        print(f"minicaffe: built {idx.kind} index of {len(ff)} rows in {time.perf_counter() - t0:.1f}s: {path}",
              file=sys.stderr)
    if args.breadth:
        idx.set_search_breadth(args.breadth)
    return idx


class _progress:
    """A tqdm bar over the file's rows on stderr for large files (a callable: rows done so far)."""

    def __init__(self, args, total, what):
        self.bar = None
        if not args.quiet and total >= PROGRESS_ROWS:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="row", desc=what, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, done):
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def main(argv=None):
    args = build_parser().parse_args(argv)
    auto_tune()
    if not (args.query or args.row or args.duplicates):
        raise SearchError("nothing to search for: give --query IMAGE..., --row ROW or --duplicates")
    if args.top < 1 or args.batch < 1 or (args.chunk_rows is not None and args.chunk_rows < 1):
        raise SearchError("-k, --batch and --chunk-rows must be >= 1")
    if not -1.0 <= args.threshold <= 1.0:
        raise SearchError(f"--threshold is a cosine, between -1 and 1; got {args.threshold}")
    failed = []
    with open_features(args.features, args.layer) as ff:
        if len(ff) == 0:
            raise SearchError(f"{ff.path}: features/{ff.dataset} has no rows")
        index = _get_index(args, ff)
        # rows and query images are searched together: one pass over the file
        labels, qs, excl = [], [], []   # labels: (label, image path or None, row or None)
        rows = [ff.row_of(r) for r in args.row]
        if rows:
            labels += [(ff.paths[r], resolve_image(ff.paths[r], ff.path), r) for r in rows]
            qs.append(ff.take(rows))
            excl += rows
        if args.query:
            def on_error(img, e):
                failed.append(img)
                print(f"minicaffe: error: {e}", file=sys.stderr)
            q, ok = QueryEncoder(ff, args.backend, args.weights).encode(args.query, args.batch, on_error)
            labels += [(args.query[i], args.query[i], None) for i in ok]
            qs.append(q)
            excl += [-1] * len(ok)
        results = []    # (label, image, row, scores, neighbour rows)
        if labels:
            q, excl = np.concatenate(qs), np.asarray(excl, np.int64)
            if index is not None:
                s, j = index.search_rescored(ff, q, args.top, exclude=excl)
            else:
                with _progress(args, len(ff), "search") as bar:
                    s, j = search(ff, q, args.top, args.chunk_rows, exclude=excl, progress=bar)
            results = [(*lab, s[n], j[n]) for n, lab in enumerate(labels)]
        for label, _, r, s, j in results:
            print(f"{label}" + (f"  (row {r})" if r is not None else ""))
            for rank, (sc, jj) in enumerate(zip(s, j), 1):
                if jj >= 0:
                    print(f"  {rank:3d}  {sc:.4f}  {ff.paths[jj]}  (row {jj})")
        pairs = scores = groups = None
        if args.duplicates:
            with _progress(args, len(ff), "duplicates") as bar:
                pairs, scores = near_duplicates(ff, args.threshold, args.chunk_rows, index, k=max(args.top, 10),
                                                progress=bar)
            groups = duplicate_groups(pairs)
            how = "exact" if index is None else f"{index.kind}, among each row's {max(args.top, 10)} nearest"
            print(f"near-duplicates (cosine >= {args.threshold:g}, {how}): {len(pairs)} pair(s) in "
                  f"{len(groups)} group(s)")
            for (a, b), sc in zip(pairs, scores):
                print(f"  {sc:.4f}  {ff.paths[a]}  {ff.paths[b]}")
        if args.json:
            _write_json(args, ff, results, pairs, scores, groups, index)
        if args.html:
            _write_html(args, ff, results, pairs, scores, groups, index)
            print(f"minicaffe: wrote {args.html}", file=sys.stderr)
    return 1 if failed else 0


def _write_json(args, ff, results, pairs, scores, groups, index):
    out = {"features": ff.path, "layer": ff.dataset, "rows": len(ff), "dim": ff.dim,
           "method": "exact" if index is None else index.kind, "queries": []}
    for label, _, r, s, j in results:
        out["queries"].append({"query": label, "row": r, "neighbours": [
            {"row": int(jj), "path": ff.paths[jj], "score": float(sc)} for sc, jj in zip(s, j) if jj >= 0]})
    if pairs is not None:
        out["duplicates"] = {"threshold": args.threshold,
                             "pairs": [{"rows": [int(a), int(b)], "score": float(sc)}
                                       for (a, b), sc in zip(pairs, scores)],
                             "groups": groups}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


def _write_html(args, ff, results, pairs, scores, groups, index):
    from . import report

    def img_of(row):
        return resolve_image(ff.paths[row], ff.path) or ff.paths[row]

    method = "exact (cosine, streamed)" if index is None else f"approximate ({index.kind})"
    sections = [report.Table(["features file", "layer", "rows", "dimensions", "search"],
                             [[ff.path, ff.dataset, len(ff), ff.dim, method]])]
    for label, img, r, s, j in results:
        query = report.Thumb(img if img is not None else label, caption=label if r is None else f"{label} (row {r})",
                             note="query")
        hits = [report.Thumb(img_of(jj), caption=ff.paths[jj], note=f"#{rank}  {sc:.4f}")
                for rank, (sc, jj) in enumerate(zip(s, j), 1) if jj >= 0]
        sections.append(report.Neighbours(query, hits, title=f"Nearest to {os.path.basename(label)}"))
    if pairs is not None:
        if not groups:
            sections.append(report.Text(f"No pair of rows has cosine >= {args.threshold:g}.",
                                        title="Near-duplicates"))
        best = {}
        for (a, b), sc in zip(pairs, scores):
            best[a] = max(best.get(a, -1.0), float(sc))
            best[b] = max(best.get(b, -1.0), float(sc))
        for n, g in enumerate(groups, 1):
            sections.append(report.Gallery(
                [report.Thumb(img_of(r), caption=ff.paths[r], note=f"best {best[r]:.4f}") for r in g],
                title=f"Near-duplicate group {n} ({len(g)} images, cosine >= {args.threshold:g})"))
    title = "Similar images" if results else "Near-duplicates"
    report.write_html(args.html, title, sections, thumb=args.thumb,
                      subtitle=f"{os.path.basename(ff.path)} - {ff.dataset} - {method}")


if __name__ == "__main__":
    exit_with(main)
