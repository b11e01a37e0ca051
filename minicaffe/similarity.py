"""Similar images and near-duplicates in a features file: the library under
``python -m minicaffe.search`` (:mod:`minicaffe.tools.search`).

:func:`open_features` opens a file written by ``python -m minicaffe.extract`` (HDF5 or .npz; any
stored layer) as a :class:`FeatureFile`; every row is treated as an L2-normalised vector and
ranked by cosine similarity (the dot product of normalised rows). Exact :func:`search` streams the
HDF5 dataset in row chunks and keeps a running top-k, so memory is bounded by ``chunk_rows`` and
the number of queries, not by the file: a 1M x 4096 float32 file (16 GB) is searched without
being loaded. Queries are rows of the file (:func:`search_rows`) or new images, whose features
:class:`QueryEncoder` computes with the model, weights, preprocessing, crop and layer recorded in
the file (weights checked by SHA-1). :func:`near_duplicates` lists every pair above a cosine
threshold (exact: a blocked self-join; with an approximate index: among each row's k nearest) and
:func:`duplicate_groups` joins the pairs into groups. For large collections an approximate
:class:`ANNIndex` (FAISS, the ``search`` extra, or hnswlib) is built from the file in chunks and
saved beside it; approximate candidates are re-scored exactly from the file. It does not extract
features of the collection (:mod:`minicaffe.features` does) and does not train anything on them;
it parses no arguments and prints nothing (long passes report through a ``progress`` callback).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .errors import ImageError, SearchError

#: bytes of feature rows read at once when no chunk size is given (bounds the streaming memory)
DEFAULT_CHUNK_BYTES = 64 << 20
#: query rows scored together against one chunk (bounds the (queries, chunk) score matrix)
QUERY_BLOCK = 1024
ANN_KINDS = ("faiss-ivf", "faiss-hnsw", "hnswlib")
#: most bytes of rows the IVF k-means trains on (a sample spread over the file)
TRAIN_BYTES = 1 << 30


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


def resolve_image(path, features_path):
    """A path stored in a features file -> an existing file: as stored (relative to the current
    folder, as extract was given it), else relative to the features file's folder; None if neither."""
    if os.path.isfile(path):
        return path
    alt = os.path.join(os.path.dirname(os.path.abspath(features_path)), path)
    return alt if os.path.isfile(alt) else None
