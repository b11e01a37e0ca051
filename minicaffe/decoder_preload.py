"""Imported once by the fork server that starts ``python -m minicaffe.extract``'s decoder processes.

Decoders are forked from that server (never from the extracting process, which runs Numba
threads), so whatever is imported here is paid for once per run instead of once per decoder:
NumPy, Pillow, :mod:`minicaffe.preprocess` and the Numba resize kernels of :mod:`minicaffe.resize`
(Numba's import alone is ~0.35 s of CPU). Loading the kernels is only a head start: a decoder
without them loads them itself on its first image, with the same result.
"""
import contextlib

from minicaffe import preprocess, resize  # noqa: F401  (preprocess: NumPy, Pillow, the decoders' entry points)

# the fork server dies on any exception but ImportError here; a decoder would then load the
# kernels itself and report whatever went wrong on its first image
with contextlib.suppress(Exception):
    resize.warm()
