"""Converters from other frameworks' checkpoints to a generated Caffe prototxt + minicaffe ``.h5``.

Each converter reads its checkpoint with :mod:`minicaffe.io.torch_pickle` (no torch needed, no
pickled code run), derives the architecture from the tensor shapes, writes readable Caffe text
(:mod:`.common`) and an ordered ``[blobs]`` mapping per layer, validates both by building a
:class:`minicaffe.Net`, and saves the ``.h5`` with provenance. Modules: :mod:`.torchvision_alexnet`,
:mod:`.efficientnet_lite`. They do not download anything (``minicaffe.weights`` does).
"""
