"""Run the kernel tests with the other vector width's kernels: on an AVX-512 machine, the AVX2
(8-lane) kernels, which that machine also executes (``MINICAFFE_SIMD_WIDTH=8``, Numba's cache in a
temporary directory). The code must be right, and fast, on both ISAs; this checks the former
where only one of them is at hand.

    python scripts/check_simd_width.py [--width 8] [pytest arguments...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

TESTS = ["tests/test_conv_variants.py", "tests/test_kernels.py", "tests/test_net.py", "tests/test_efficientnet.py",
         "tests/test_threads.py", "tests/test_program_kernels.py"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=("8", "16"), default="8")
    args, rest = ap.parse_known_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="minicaffe-simd") as cache:
        env = dict(os.environ, MINICAFFE_SIMD_WIDTH=args.width, NUMBA_CACHE_DIR=cache)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(rest or TESTS)]
        return subprocess.call(cmd, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
