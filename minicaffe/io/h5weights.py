"""Our converted-weights format: HDF5 with one group per layer holding ordered blobs.

Layout (mirrors Caffe's ``layer.blobs_`` and pycaffe's ``net.params``)::

    /<layer name>/0   weight  (e.g. conv: (M, C/group, kh, kw) OIHW; fc: (M, K) row-major)
    /<layer name>/1   bias    (M,)
    attrs on the file: format="minicaffe-weights", version, source, source_sha1, source_sha256,
                       prototxt (the full text), converted_at, plus any caller extras
    attrs on each group: type (the Caffe layer type), order (position in the net)

Layer names containing ``/`` (GoogLeNet's ``inception_3a/1x1``) are stored with ``/`` replaced by
``__`` and the true name kept in the group's ``name`` attribute. Reading checks each dataset's
shape fits in the file size before loading; errors are :class:`WeightsError` naming the file.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np

from ..errors import WeightsError

FORMAT = "minicaffe-weights"


def _key(name):
    return name.replace("/", "__")


def save_h5(path, params, prototxt="", types=None, **attrs):
    """params: mapping layer name -> [arrays]. Written atomically (temp file, then rename)."""
    import h5py
    tmp = f"{path}.tmp{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = 1
        f.attrs["prototxt"] = prototxt
        f.attrs["converted_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for k, v in attrs.items():
            f.attrs[k] = "" if v is None else v
        for order, (name, blobs) in enumerate(params.items()):
            g = f.create_group(_key(name))
            g.attrs["name"] = name
            g.attrs["order"] = order
            if types and name in types:
                g.attrs["type"] = types[name]
            for i, a in enumerate(blobs):
                g.create_dataset(str(i), data=np.asarray(a, dtype=np.float32))
    os.replace(tmp, path)


def load_h5(path, with_attrs=False):
    """-> OrderedDict layer name -> [arrays] (and the file attrs if ``with_attrs``)."""
    import h5py
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot open as HDF5 weights: {e}") from None
    out = OrderedDict()
    with f:
        if f.attrs.get("format", FORMAT) != FORMAT:
            raise WeightsError(f"{path}: not a minicaffe weights file (format={f.attrs.get('format')!r})")
        groups = []
        for key in f.keys():
            g = f[key]
            if not isinstance(g, h5py.Group):
                raise WeightsError(f"{path}: unexpected dataset {key!r} at the top level")
            groups.append((int(g.attrs.get("order", len(groups))), str(g.attrs.get("name", key)), g))
        groups.sort(key=lambda t: t[0])
        size = os.path.getsize(path)
        for _, name, g in groups:
            blobs = []
            keys = sorted(g.keys(), key=lambda s: int(s) if s.isdigit() else 1 << 30)
            for i, k in enumerate(keys):
                if k != str(i):
                    raise WeightsError(f"{path}: layer {name!r} has blob {k!r}; expected 0, 1, ... in order")
                ds = g[k]
                if int(np.prod(ds.shape)) * 4 > size + (1 << 20) and ds.compression is None:
                    raise WeightsError(f"{path}: layer {name!r} blob {k} claims shape {ds.shape}, larger than the file")
                try:
                    blobs.append(np.asarray(ds[()], dtype=np.float32))
                except (OSError, ValueError) as e:
                    raise WeightsError(f"{path}: layer {name!r} blob {k} is unreadable: {e}") from None
            out[name] = blobs
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return (out, attrs) if with_attrs else out
