"""``python -m minicaffe.extract``: the command's entry point, and the old import path of its pieces.

The command lives in :mod:`minicaffe.tools.extract`, the library it drives in
:mod:`minicaffe.features`; this module only runs the one and re-exports both, so that
``python -m minicaffe.extract`` and ``from minicaffe.extract import FeatureExtractor, load_model,
main`` keep working. :func:`load_model` and :func:`preprocessing_for` here also accept the old
form, a parsed argument namespace as the first argument.
"""
from __future__ import annotations

from .cli import exit_with
from .errors import MinicaffeError, UsageError
from .features import model as _model
from .features.decode import DECODER_PRIORITIES, DecodePool, decoder_priority, iter_decoded
from .features.extractor import PRE_SUFFIX, FeatureExtractor, LayerRequest, default_layers, resolve_layers
from .features.model import LoadedModel, default_model
from .features.store import (
    LOCK_SUFFIX,
    OUTPUT_FORMATS,
    PARTS_SUFFIX,
    OutputLock,
    Source,
    assemble,
    check_resumable,
    count_rows,
    determinants_digest,
    drop_if_empty,
    feature_determinants,
    has_checkpoints,
    output_format,
    read_output,
    read_parts,
    utf8_text,
    write_part,
)
from .tools.extract import EXAMPLES, NonFinite, build_parser, finish, main, model_options, warn

__all__ = [
    "DECODER_PRIORITIES", "EXAMPLES", "LOCK_SUFFIX", "OUTPUT_FORMATS", "PARTS_SUFFIX", "PRE_SUFFIX",
    "DecodePool", "FeatureExtractor", "LayerRequest", "LoadedModel", "MinicaffeError", "NonFinite", "OutputLock",
    "Source", "UsageError", "assemble", "build_parser", "check_resumable", "count_rows", "decoder_priority",
    "default_layers", "default_model", "determinants_digest", "drop_if_empty", "feature_determinants", "finish",
    "has_checkpoints", "iter_decoded", "load_model", "main", "output_format", "preprocessing_for", "read_output",
    "read_parts", "resolve_layers", "utf8_text", "warn", "write_part",
]


def preprocessing_for(args=None, **options):
    """:func:`minicaffe.features.preprocessing_for` (keywords), or the old form: a parsed namespace."""
    return _model.preprocessing_for(**(model_options(args) if args is not None else options))


def load_model(args=None, spec=None, **options) -> LoadedModel:
    """:func:`minicaffe.features.load_model` (keywords), or the old form ``load_model(args, spec)``."""
    if args is None:
        return _model.load_model(**options, **({"preprocessing": spec} if spec is not None else {}))
    return _model.load_model(**model_options(args), backend=args.backend, strict=getattr(args, "strict", False),
                             preprocessing=spec)


if __name__ == "__main__":
    exit_with(main)
