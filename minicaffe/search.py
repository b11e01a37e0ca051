"""``python -m minicaffe.search``: the command's entry point, and the old import path of the search library.

The command lives in :mod:`minicaffe.tools.search`, exact and approximate search, near-duplicates
and query encoding in :mod:`minicaffe.similarity`; this module runs the one and re-exports both, so
that ``python -m minicaffe.search`` and ``from minicaffe.search import open_features, search`` keep
working.
"""
from .cli import exit_with
from .errors import SearchError
from .similarity import (
    ANN_KINDS,
    DEFAULT_CHUNK_BYTES,
    QUERY_BLOCK,
    TRAIN_BYTES,
    ANNIndex,
    FeatureFile,
    QueryEncoder,
    default_chunk_rows,
    duplicate_groups,
    l2_normalize,
    near_duplicates,
    open_features,
    recall_at_k,
    resolve_image,
    search,
    search_rows,
)
from .tools.search import PROGRESS_ROWS, build_parser, main

__all__ = ["ANN_KINDS", "DEFAULT_CHUNK_BYTES", "PROGRESS_ROWS", "QUERY_BLOCK", "TRAIN_BYTES", "ANNIndex",
           "FeatureFile", "QueryEncoder", "SearchError", "build_parser", "default_chunk_rows", "duplicate_groups",
           "l2_normalize", "main", "near_duplicates", "open_features", "recall_at_k", "resolve_image", "search",
           "search_rows"]

if __name__ == "__main__":
    exit_with(main)
