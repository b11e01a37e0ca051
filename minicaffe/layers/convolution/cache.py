"""A cache of weight transforms (Winograd filters, packed panels) keyed by the weight array.

Recomputing a transform per call would cost as much as the convolution at small batches. Weights
may be edited in place (``net.params[...][0][...] =``, training), so every hit on a writeable
array compares the current values with a private copy (one pass over w) and recomputes on any
difference: the cache never serves a stale transform. A read-only array that owns its memory
(:meth:`minicaffe.Net.freeze`) cannot change, so its hits skip that pass (at batch 1 it costs as
much as a small layer); :func:`forget` drops an array's entries when it is made writeable again.
Entries go with their weight array (a deleted net frees its transforms at once); at most
:data:`FILTER_CACHE_SIZE` are kept, least recently used out.
"""
from __future__ import annotations

import threading
import weakref

import numba
import numpy as np
from numba import njit, prange

from ...backend import serial_twin


@njit(parallel=True, cache=True, nogil=True)
def _same_values(a, b):
    # a, b: flat float32 of one size -> True when bitwise-equal as numbers (NaN never equal)
    diff = 0
    for i in prange(a.size):
        if a[i] != b[i]:
            diff += 1
    return diff == 0


#: (id(w), w.shape, tag) -> (copy of w, transform)
_FILTER_CACHE = {}
FILTER_CACHE_SIZE = 64


_same_values_serial = serial_twin(_same_values)

#: elements from which the comparison runs on all threads
PARALLEL_COMPARE_FROM = 1 << 18


def _frozen(w):
    return not w.flags.writeable and w.flags.owndata


def cached_transform(w, tag, make):
    """w: float32 weight array, tag: hashable name of the transform, make: wf -> transform.
    Returns ``make(w)``, computed once per weight array, tag and set of values."""
    key = (id(w), w.shape, tag)
    hit = _FILTER_CACHE.pop(key, None)
    if hit is not None and hit[0] is None and _frozen(w):
        _FILTER_CACHE[key] = hit
        return hit[1]
    wf = np.ascontiguousarray(w, dtype=np.float32)
    if hit is not None and hit[0] is not None and (_same_values if wf.size >= PARALLEL_COMPARE_FROM else
                                                   _same_values_serial)(hit[0].ravel(), wf.ravel()):
        _FILTER_CACHE[key] = hit                      # re-insert: most recently used last
        return hit[1]
    out = make(wf)
    # a frozen array keeps no copy: its values are the ones the transform was made from
    _FILTER_CACHE[key] = (None if _frozen(w) else wf.copy(), out)
    if hit is None:
        # an id can only be reused after this callback has run, so it never drops a newer entry
        weakref.finalize(w, _FILTER_CACHE.pop, key, None)
    while len(_FILTER_CACHE) > FILTER_CACHE_SIZE:
        _FILTER_CACHE.pop(next(iter(_FILTER_CACHE)))
    return out


def forget(w):
    """Drop every cached transform and runner of ``w`` (its values may change from now on)."""
    for key in [k for k in _FILTER_CACHE if k[0] == id(w)]:
        del _FILTER_CACHE[key]
    for key in [k for k in _RUNNERS if id(w) in k[2]]:
        del _RUNNERS[key]


#: runner key -> a prepared kernel sequence (see cached_runner)
_RUNNERS = {}
RUNNERS_SIZE = 256


def runner_key(arrays, params):
    """The cache key of a prepared kernel sequence over the weight arrays ``arrays`` (None allowed)
    and the hashable ``params``, or None when an array may change (not frozen): then it is prepared
    for every call. A key holds the calling thread (a runner's scratch arrays are its own) and
    Numba's thread count."""
    ids = []
    for a in arrays:
        if a is not None and not _frozen(a):
            return None
        ids.append(None if a is None else id(a))
    return threading.get_ident(), numba.get_num_threads(), tuple(ids), params


def cached_runner(key, arrays, make):
    """``make()`` (a function running a layer's kernels, with its packed weights, geometry and
    scratch arrays prepared once), kept under ``key`` (:func:`runner_key`) until one of ``arrays``
    is freed or forgotten; made afresh when key is None. Per-call work in the wrappers (packing
    lookups, padded biases, thread counts, allocations) costs ~50 us a layer at batch 1."""
    if key is None:
        return make()
    run = _RUNNERS.get(key)
    if run is None:
        run = _RUNNERS[key] = make()
        for a in arrays:
            if a is not None:
                weakref.finalize(a, _RUNNERS.pop, key, None)
        while len(_RUNNERS) > RUNNERS_SIZE:
            _RUNNERS.pop(next(iter(_RUNNERS)))
    return run


def fused_cap(relu_cap):
    """The fused activation's upper bound as the kernels take it (float32; inf: plain ReLU)."""
    return np.float32(np.inf if relu_cap is None else relu_cap)


def clip_bounds(relu, relu_cap):
    """The fused activation as float32 clip bounds (lo, hi): none (-inf, inf), ReLU (0, inf) or
    ReLU6 / Clip(0, cap) (0, cap)."""
    if not relu:
        return np.float32(-np.inf), np.float32(np.inf)
    return np.float32(0.0), fused_cap(relu_cap)
