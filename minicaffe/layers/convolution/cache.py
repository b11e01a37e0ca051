"""A cache of weight transforms (Winograd filters, packed panels) keyed by the weight array.

Recomputing a transform per call would cost as much as the convolution at small batches. Weights
may be edited in place (``net.params[...][0][...] =``, training), so every hit compares the
current values with a private copy (one parallel pass over w, a small fraction of a transform's
memory traffic) and recomputes on any difference: the cache never serves a stale transform.
Entries go with their weight array (a deleted net frees its transforms at once); at most
:data:`FILTER_CACHE_SIZE` are kept, least recently used out.
"""
from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange


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


def cached_transform(w, tag, make):
    """w: float32 weight array, tag: hashable name of the transform, make: wf -> transform.
    Returns ``make(w)``, computed once per weight array, tag and set of values."""
    key = (id(w), w.shape, tag)
    hit = _FILTER_CACHE.pop(key, None)
    wf = np.ascontiguousarray(w, dtype=np.float32)
    if hit is not None and _same_values(hit[0].ravel(), wf.ravel()):
        _FILTER_CACHE[key] = hit                      # re-insert: most recently used last
        return hit[1]
    out = make(wf)
    _FILTER_CACHE[key] = (wf.copy(), out)
    if hit is None:
        # an id can only be reused after this callback has run, so it never drops a newer entry
        weakref.finalize(w, _FILTER_CACHE.pop, key, None)
    while len(_FILTER_CACHE) > FILTER_CACHE_SIZE:
        _FILTER_CACHE.pop(next(iter(_FILTER_CACHE)))
    return out


def fused_cap(relu_cap):
    """The fused activation's upper bound as the kernels take it (float32; inf: plain ReLU)."""
    return np.float32(np.inf if relu_cap is None else relu_cap)
