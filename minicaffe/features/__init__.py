"""Deep features of image collections, as a library: the pieces the extract command, the Dask
workers and :class:`minicaffe.DeCAF` share.

- :mod:`.model`: which net, weights and preprocessing (:func:`load_model`, typed keywords)
- :mod:`.extractor`: which blobs (:func:`resolve_layers`) and the :class:`FeatureExtractor`
  (resized RGB images -> (N, D) float32 per blob)
- :mod:`.decode`: decoder processes (:class:`DecodePool`, :func:`iter_decoded`)
- :mod:`.store`: checkpoint parts, their merge into one HDF5/npz file, resuming
- :mod:`.cluster`: the same run as Dask shards (:func:`~.cluster.run_cluster` -> a report);
  imported on use, as it is the only part that needs Dask

None of it parses arguments or prints; errors are :mod:`minicaffe.errors` classes.
"""
from .decode import DecodePool, decoder_priority, iter_decoded
from .extractor import FeatureExtractor, LayerRequest, default_layers, resolve_layers
from .model import LoadedModel, default_model, load_model, preprocessing_for
from .store import Source, assemble, read_output, read_parts, write_part

__all__ = [
    "DecodePool",
    "FeatureExtractor",
    "LayerRequest",
    "LoadedModel",
    "Source",
    "assemble",
    "decoder_priority",
    "default_layers",
    "default_model",
    "iter_decoded",
    "load_model",
    "preprocessing_for",
    "read_output",
    "read_parts",
    "resolve_layers",
    "write_part",
]
