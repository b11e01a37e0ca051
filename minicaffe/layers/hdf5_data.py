"""Caffe's ``HDF5Data`` layer: batches of rows from the HDF5 files a list file names.

``hdf5_data_param { source: "train.txt" batch_size: 64 shuffle: false }``: ``source`` is a text
file with one ``.h5`` path per line; every top names a dataset of that name in each file, with the
rows on the first axis (``data (N, C, H, W)``, ``label (N,)`` or ``(N, 1)``...). Each forward
copies the next ``batch_size`` rows into the tops (as float32), moving on to the next file at the
end of one and wrapping around after the last, as hdf5_data_layer.cpp does; ``shuffle`` permutes
the file order and the rows of each file (NumPy's generator, not Caffe's). A file is read whole
when it is reached. It does not write (``HDF5Output``) and has no backward.
"""
from __future__ import annotations

import os

import numpy as np

from .base import Layer, register


@register("HDF5Data")
class HDF5Data(Layer):
    """no bottoms -> one top per dataset name, ``(batch_size,) + row shape``."""

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("hdf5_data_param")
        src, self.batch = p.get("source"), int(p.get("batch_size", 0))
        if src is None or self.batch < 1:
            raise self.err("hdf5_data_param needs a source and a positive batch_size")
        if not self.tops:
            raise self.err("needs at least one top (a dataset name)")
        self.shuffle = str(p.get("shuffle", "false")).lower() in ("true", "1")
        try:
            with open(str(src), encoding="utf-8") as f:
                self.files = [ln.strip() for ln in f if ln.strip()]
        except OSError as e:
            raise self.err(f"{src}: cannot read the file list: {e.strerror}") from None
        if not self.files:
            raise self.err(f"{src}: lists no HDF5 files")
        self.rng = np.random.default_rng(0)
        self.order = list(range(len(self.files)))
        self.file_pos, self.row = 0, 0
        self._load(self.order[0])

    def _load(self, k):
        import h5py
        path = self.files[k]
        if not os.path.isfile(path):
            raise self.err(f"{path}: no such HDF5 file")
        with h5py.File(path, "r") as f:
            missing = [t for t in self.tops if t not in f]
            if missing:
                raise self.err(f"{path}: no dataset named {missing[0]!r} (datasets: {sorted(f)})")
            self.arrays = [np.asarray(f[t][()], dtype=np.float32) for t in self.tops]
        n = {a.shape[0] for a in self.arrays}
        if len(n) != 1:
            raise self.err(f"{path}: the datasets {self.tops} have different numbers of rows")
        self.rows = np.arange(n.pop())
        if self.shuffle:
            self.rng.shuffle(self.rows)

    def setup(self, shapes):
        return [(self.batch,) + a.shape[1:] for a in self.arrays]

    def forward(self, bottoms, params, backend, inplace=False):
        outs = [np.empty((self.batch,) + a.shape[1:], np.float32) for a in self.arrays]
        for i in range(self.batch):
            if self.row >= len(self.rows):
                self.file_pos += 1
                if self.file_pos >= len(self.files):
                    self.file_pos = 0
                    if self.shuffle:
                        self.rng.shuffle(self.order)
                if len(self.files) > 1 or self.shuffle:
                    self._load(self.order[self.file_pos])
                self.row = 0
            r = self.rows[self.row]
            for o, a in zip(outs, self.arrays):
                if a.shape[1:] != o.shape[1:]:
                    raise self.err(f"{self.files[self.order[self.file_pos]]}: rows of shape {a.shape[1:]}, "
                                   f"the first file's are {o.shape[1:]}")
                o[i] = a[r]
            self.row += 1
        return outs
