"""The net of a feature run: a registered model name or a prototxt + weights -> a loaded net.

:func:`preprocessing_for` says which :class:`~minicaffe.preprocess.Preprocessing` a run uses,
known from the options alone (no weights are read, so a resumed run can be checked and decoding
can start first); :func:`load_model` builds the :class:`~minicaffe.net.Net` and returns it with
that preprocessing, the layer aliases (``decaf6`` -> ``fc6``) and the provenance written into a
features file. Every option is a keyword with the command line's meaning (``--model``,
``--prototxt``, ``--weights``, ``--preprocess``, ``--mean``, ``--crop-size``, ``--backend``,
``--strict``). It does not choose layers or decode images.
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, NamedTuple

from ..cli import shown
from ..errors import MinicaffeError, UsageError
from ..models import CAFFE_PREPROCESSING, DECAF_ALIASES, MODELS, get_model
from ..preprocess import Preprocessing, with_channel_means

if TYPE_CHECKING:
    from ..net import Net


def default_model() -> str:
    """The embedded model with real weights (``models.DEFAULT_MODEL``) when registered, else CaffeNet."""
    from .. import models
    name = getattr(models, "DEFAULT_MODEL", "efficientnet-lite0")
    return name if name in MODELS else "caffenet"


def preprocessing_for(*, model: str | None = None, prototxt: str | None = None, weights: str | None = None,
                      preprocess: str = "caffe", mean: str = "model", crop_size: int | None = None) -> Preprocessing:
    """The preprocessing a run will use, known from the options alone (no weights loaded).

    model: a registered name (default :func:`default_model`), or prototxt + weights with
    preprocess ``"caffe"`` or a registered model's name; mean ``"channel"`` subtracts the mean
    image's per-channel means; crop_size overrides the crop side.
    """
    if prototxt:
        if model:
            raise UsageError("give either --model or --prototxt, not both")
        if not weights:
            raise UsageError("--prototxt needs --weights (a .caffemodel or converted .h5)")
        if preprocess == "caffe":
            spec = CAFFE_PREPROCESSING
        elif preprocess in MODELS:
            spec = MODELS[preprocess].preprocessing
        else:
            raise UsageError(f"--preprocess must be 'caffe' or a model name ({', '.join(sorted(MODELS))})")
    else:
        spec = get_model(model or default_model()).preprocessing
    if mean == "channel":
        spec = with_channel_means(spec)
    if crop_size:
        spec = dataclasses.replace(spec, crop=crop_size)
    return spec


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns (a tuple: ``net, spec, aliases, desc = load_model(...)``)."""
    net: Net
    preprocessing: Preprocessing
    aliases: dict           # alias -> blob name, e.g. decaf6 -> fc6
    description: dict       # model, prototxt, weights, weights_sha1: the provenance of a features file


def load_model(*, model: str | None = None, prototxt: str | None = None, weights: str | None = None,
               preprocess: str = "caffe", mean: str = "model", crop_size: int | None = None,
               backend: str = "cpu", strict: bool = False,
               preprocessing: Preprocessing | None = None, freeze: bool = True) -> LoadedModel:
    """Build the run's net -> :class:`LoadedModel` (net, preprocessing, aliases, description).

    The options are :func:`preprocessing_for`'s, plus backend (``numpy`` | ``cpu`` | ``cuda``) and
    strict (refuse weights holding NaN/Inf); ``preprocessing``: what preprocessing_for returned,
    when the caller already has it; ``freeze``: make the weights read-only
    (:meth:`minicaffe.Net.freeze`: extraction never edits them, and frozen weights spare every
    forward a pass over them).
    """
    spec = preprocessing if preprocessing is not None else preprocessing_for(
        model=model, prototxt=prototxt, weights=weights, preprocess=preprocess, mean=mean, crop_size=crop_size)
    if prototxt:
        from ..net import Net
        net = Net(prototxt, weights, backend=backend, strict=strict)
        aliases = {k: v for k, v in DECAF_ALIASES.items() if v in net.blob_shapes}
        if preprocess in MODELS:    # a model's refined copy (finetune) keeps that model's aliases
            aliases.update({k: v for k, v in MODELS[preprocess].aliases.items() if v in net.blob_shapes})
        desc = {"model": os.path.basename(prototxt), "prototxt": os.path.abspath(prototxt)}
    else:
        spec_m = get_model(model or default_model())
        if weights:
            try:
                net = spec_m.load(backend, weights=weights, strict=strict)
            except MinicaffeError as e:
                raise _weights_for_other_net(weights, spec_m.name, e) from None
        else:
            net = spec_m.load(backend, strict=strict)
        aliases = dict(spec_m.aliases)
        desc = {"model": spec_m.name, "prototxt": spec_m.prototxt}
    desc["weights"] = os.path.abspath(net.weights_path) if net.weights_path else ""
    desc["weights_sha1"] = net.weights_sha1 or ""
    if freeze:
        net.freeze()
    return LoadedModel(net, spec, aliases, desc)


def _weights_for_other_net(weights, model, err):
    """--model M --weights W that do not fit M: when W carries its own net (finetune's output, a
    converted file) the error says exactly which flags use it."""
    proto_attr = ""
    if str(weights).lower().endswith((".h5", ".hdf5")):
        try:
            import h5py
            with h5py.File(weights, "r") as f:
                proto_attr = str(f.attrs.get("prototxt", "") or "")
        except Exception:  # noqa: BLE001 - not readable as HDF5: the loader's own error stands
            proto_attr = ""
    if not proto_attr:
        return err
    side = os.path.splitext(weights)[0] + ".prototxt"
    how = (f"use --prototxt {side} --weights {weights} --preprocess {model}" if os.path.isfile(side) else
           f"write its net with python -c \"import h5py; open('{side}', 'w').write(h5py.File('{weights}')"
           f".attrs['prototxt'])\", then use --prototxt {side} --weights {weights} --preprocess {model}")
    return UsageError(f"{shown(weights)}: these weights are for another net than model {model} "
                      f"(e.g. refined by finetune with a new classifier size): {how}  [{err}]")
