"""The old import path of the Dask runner behind ``python -m minicaffe.extract --cluster``.

It lives in :mod:`minicaffe.features.cluster` (:func:`run_cluster` returns a
:class:`ClusterReport`); this module re-exports it so that ``from minicaffe import distributed``
keeps working.
"""
from .errors import ClusterError
from .features.cluster import (
    DEFAULT_SHARD_SIZE,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    WORKER_WAIT_S,
    ClusterProgress,
    ClusterReport,
    ModelConfig,
    ShardJob,
    connect,
    dashboard,
    dedupe,
    parse_cluster,
    read_shards,
    run_cluster,
    run_shard,
    summarize,
    worker_extractor,
    write_shard,
)

__all__ = [
    "DEFAULT_SHARD_SIZE", "SHARD_PREFIX", "SHARD_SUFFIX", "WORKER_WAIT_S", "ClusterError", "ClusterProgress",
    "ClusterReport", "ModelConfig", "ShardJob", "connect", "dashboard", "dedupe", "parse_cluster", "read_shards",
    "run_cluster", "run_shard", "summarize", "worker_extractor", "write_shard",
]
