"""One tiny timing helper used everywhere (profiler, benchmark scripts), in the style of tinygrad's ``Timing``.

:class:`Timing` is a context manager that measures one block with ``time.perf_counter_ns``,
optionally synchronising a device before starting and before stopping (so queued GPU kernels are
counted, not just their launch), and optionally printing ``<prefix>12.34 ms``. :func:`stats`
reduces repeated samples to min / median / mean, and :func:`repeat` runs a callable ``warmup``
times untimed (the first call JIT-compiles Numba kernels: never time it) and then ``repeats``
times timed. This module does not decide *what* to time and has no notion of layers; the
profiler attaches it through the net's hooks. It does not assert on speed: tests never time.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass


def now_ms() -> float:
    """Monotonic wall clock in milliseconds (``perf_counter_ns``, so no float drift over long runs)."""
    return time.perf_counter_ns() * 1e-6


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, all in milliseconds."""
    min_ms: float
    median_ms: float
    mean_ms: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def stats(samples_ms) -> Stats:
    """samples_ms: (R,) timings in ms, R >= 1 -> :class:`Stats` (min is the least noisy estimate,
    median the typical one; the mean is what ``caffe time`` reports)."""
    s = [float(v) for v in samples_ms]
    if not s:
        raise ValueError("stats() needs at least one sample")
    return Stats(min(s), statistics.median(s), statistics.fmean(s), len(s))


class Timing:
    """``with Timing("fc6: ", sync=f) as t: ...`` -> ``t.ms``; prints ``fc6: 3.21 ms`` when a prefix is given.

    sync: a callable run before the clock starts and before it stops (e.g.
    ``lambda: minicaffe.backend.synchronize("cuda")``), or None on the CPU.
    """

    def __init__(self, prefix: str | None = None, sync=None, enabled: bool = True):
        self.prefix, self.sync, self.enabled = prefix, sync, enabled
        self.ms = float("nan")

    def __enter__(self):
        if self.sync is not None:
            self.sync()  # earlier queued work must not be billed to this block
        self._t0 = now_ms()
        return self

    def __exit__(self, *exc):
        if self.sync is not None:
            self.sync()
        self.ms = now_ms() - self._t0
        if self.enabled and self.prefix is not None:
            print(f"{self.prefix}{self.ms:.2f} ms")
        return False


def repeat(fn, repeats: int = 10, warmup: int = 1, sync=None) -> Stats:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed -> :class:`Stats`."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeat() needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        with Timing(sync=sync) as t:
            fn()
        samples.append(t.ms)
    return stats(samples)
