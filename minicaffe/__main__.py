"""``minicaffe TOOL ...`` (the console command) and ``python -m minicaffe TOOL ...``: one entry point
for every tool, each the same as ``python -m minicaffe.TOOL ...``.

It only dispatches: the tool module runs as ``__main__`` with ``TOOL`` removed from the
arguments, so its own parser, help text, error lines and exit codes are unchanged.
"""
from __future__ import annotations

import runpy
import sys

from .runtime import auto_tune

#: tool name -> module run as __main__, and its one-line purpose
TOOLS = {
    "extract": ("minicaffe.extract", "deep features of images into HDF5/npz"),
    "profile": ("minicaffe.profile", "per-layer time decomposition (as `caffe time`)"),
    "check": ("minicaffe.check", "compare activations with saved Caffe blobs, OpenCV DNN, PyTorch"),
    "search": ("minicaffe.search", "similar images and near-duplicates in a features file"),
    "explain": ("minicaffe.explain", "saliency, occlusion, unit statistics, activation grids"),
    "report": ("minicaffe.report", "one self-contained HTML page from charts and pictures"),
    "pycaffe": ("minicaffe.pycaffe", "run an unchanged pycaffe script (`import caffe`)"),
    "transfer": ("minicaffe.transfer", "DeCAF experiments: classifiers on deep features"),
    "finetune": ("minicaffe.finetune", "fine-tune a net's top layers"),
    "robustness": ("minicaffe.robustness", "FGSM / iterated FGSM probe"),
    "convert": ("minicaffe.convert", "convert weights to minicaffe's HDF5"),
    "weights": ("minicaffe.weights", "list / fetch + verify official weights"),
    "classify": ("minicaffe.classify", "top-5 ImageNet labels of images"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = ["usage: minicaffe TOOL [ARGS...]   (TOOL --help for its options)", "", "tools:"]
    lines += [f"  {name:<{width}}  {purpose}" for name, (_, purpose) in TOOLS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    tool, rest = argv[0], argv[1:]
    if tool not in TOOLS:
        print(f"minicaffe: error: unknown tool {tool!r}\n\n{usage()}", file=sys.stderr)
        return 2
    auto_tune()     # once per process; the tool's own main finds it done
    module = TOOLS[tool][0]
    sys.argv = [f"minicaffe {tool}", *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
