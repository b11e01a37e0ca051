"""Which blobs a feature run takes, and the extractor that turns resized images into feature rows.

:func:`resolve_layers` maps what a user asks for (``decaf6``, ``fc6``, ``fc6.pre``) to the net's
blobs, checking that each exists and that a pre-activation value exists where one is asked for;
:class:`FeatureExtractor` holds a net, its preprocessing and those requests, and turns a batch of
decoded, resized RGB images into one (N, D) float32 array per requested blob (crop, mean, channel
order, forward up to the last requested blob, 10-crop averaging). It does not decode files, batch
a collection or write anything: :mod:`.decode` and :mod:`.store` do, and the extract command
drives all three.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ..errors import UsageError
from ..preprocess import CROP_MODES, N_OVERSAMPLE, check_spec, normalize_batch

PRE_SUFFIX = ".pre"


@dataclasses.dataclass
class LayerRequest:
    request: str      # what the user wrote (decaf6, fc6, fc6.pre)
    blob: str         # the net's blob name (fc6)
    pre: bool         # the value before in-place layers (ReLU) ran
    end_index: int    # last layer index that writes the blob

    @property
    def key(self) -> str:
        return self.blob + (PRE_SUFFIX if self.pre else "")

    @property
    def dataset(self) -> str:
        return self.key.replace("/", "__")


def resolve_layers(net, names, aliases=None, pre_relu=False) -> list[LayerRequest]:
    """Requested names -> [LayerRequest]; aliases map decaf6 -> fc6; ``x.pre`` or pre_relu -> pre-ReLU."""
    aliases = dict(aliases or {})
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        pre = pre_relu
        if name.endswith(PRE_SUFFIX):
            name, pre = name[:-len(PRE_SUFFIX)], True
        blob = aliases.get(name, name)
        if blob not in net.blob_shapes:
            known = [b for b in net.blob_shapes if b not in net.input_names]
            raise UsageError(f"--layers: {raw!r} is not a blob of the net (blobs: {', '.join(known)}; "
                             f"aliases: {', '.join(f'{k}={v}' for k, v in aliases.items()) or 'none'})")
        writers = [i for i, l in enumerate(net.layers) if blob in l.tops]
        inplace = [i for i in writers if blob in net.layers[i].bottoms]
        if pre and not inplace:
            raise UsageError(f"--layers: {raw!r}: no in-place layer (ReLU) modifies blob {blob!r}, so it has no "
                             f"pre-activation value; ask for {blob!r}")
        req = LayerRequest(raw, blob, pre, max(writers))
        if req.key not in {r.key for r in out}:
            out.append(req)
    if not out:
        raise UsageError("--layers: no layer given")
    return out


def default_layers(aliases, net) -> list[str]:
    """The model's default feature layer: DeCAF6 for the Caffe models, ``features`` (the global pool)
    for the EfficientNets."""
    for cand in ("default", "decaf6", "features"):
        if cand in aliases and aliases[cand] in net.blob_shapes:
            return [cand]
    raise UsageError("this model has no default feature layer; choose one with --layers (blobs: "
                     + ", ".join(b for b in net.blob_shapes if b not in net.input_names) + ")")


class FeatureExtractor:
    """Net + preprocessing + requested layers: batches of resized RGB uint8 images -> features.

    Shared by the extract command, the Dask workers and :class:`minicaffe.DeCAF`.
    """

    def __init__(self, net, spec, layers, crop="center", concat=False):
        if crop not in CROP_MODES:
            raise UsageError(f"--crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
        self.net, self.spec, self.layers, self.crop, self.concat = net, spec, layers, crop, concat
        inp = net.input_names[0]
        check_spec(spec, net.input_shapes[inp][2:])
        self.end = net.layers[max(r.end_index for r in layers)].name
        self.keep_pre = any(r.pre for r in layers)
        self.fetch = sorted({r.key for r in layers})

    def feature_dims(self):
        """dataset name -> (D, per-image blob shape)."""
        dims = {}
        for r in self.layers:
            shp = tuple(self.net.blob_shapes[r.blob][1:])
            dims[r.dataset] = (int(np.prod(shp)), shp)
        if self.concat:
            return {"concat": (sum(d for d, _ in dims.values()), (sum(d for d, _ in dims.values()),))}
        return dims

    def normalize(self, images):
        """list of (H, W, 3) uint8 RGB (resized) -> (N or 10N, 3, c, c) float32."""
        if len({im.shape for im in images}) == 1:
            return normalize_batch(images, self.spec, self.crop, self.net.backend)
        return np.concatenate([normalize_batch([im], self.spec, self.crop, self.net.backend) for im in images])

    def forward(self, x, n):
        """x: (n or 10n, 3, c, c) -> OrderedDict dataset name -> (n, D) float32."""
        blobs = self.net.forward(x, end=self.end, keep_pre_activation=self.keep_pre, fetch=self.fetch)
        out = collections.OrderedDict()
        for r in self.layers:
            f = np.asarray(blobs[r.key], np.float32).reshape(x.shape[0], -1)
            if self.crop == "oversample":
                # Caffe's Classifier: average the 10 crops' outputs per image (image-major order)
                f = f.reshape(n, N_OVERSAMPLE, -1).mean(axis=1)
            out[r.dataset] = np.ascontiguousarray(f, dtype=np.float32)
        if self.concat:
            return collections.OrderedDict(concat=np.concatenate(list(out.values()), axis=1))
        return out

    def features(self, images):
        """list of (H, W, 3) uint8 RGB (resized) -> OrderedDict dataset name -> (N, D) float32."""
        return self.forward(self.normalize(images), len(images))
