"""``python -m minicaffe.convert``: turn model files into minicaffe's HDF5 weights.

``convert deploy.prototxt model.caffemodel -o weights/NAME.h5`` reads a Caffe binary (current or
legacy V1), checks every parameter blob against the shapes the prototxt implies (building the
net, so a mismatch is one clear error naming the layer and both shapes), and writes the ordered
``[weight, bias]`` blobs per layer with provenance attributes (source file, sha1, sha256,
prototxt text). Other source formats (PyTorch checkpoints) register extra sub-commands here.
"""
from __future__ import annotations

import argparse
import os

from .cli import exit_with
from .errors import MinicaffeError
from .net import Net, sha1_file


def convert_caffemodel(prototxt, caffemodel, out):
    """Convert and return the built Net (weights validated against the prototxt)."""
    net = Net(prototxt, caffemodel, backend="numpy")
    types = {l.name: l.type for l in net.layers}
    net.save_h5(out, source=os.path.basename(str(caffemodel)), source_sha1=sha1_file(caffemodel),
                source_sha256=sha1_file(caffemodel, "sha256"), types=types)
    return net


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.convert",
        description="Convert Caffe weights to minicaffe HDF5 (one group per layer, blobs 0=weight 1=bias).",
        epilog="example: python -m minicaffe.convert weights/bvlc_reference_caffenet.deploy.prototxt "
               "bvlc_reference_caffenet.caffemodel -o weights/caffenet.h5")
    p.add_argument("prototxt", help="deploy prototxt (current or legacy V1 text format)")
    p.add_argument("weights", help=".caffemodel (current or legacy V1 binary)")
    p.add_argument("-o", "--output", required=True, help="output .h5 path")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
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
