"""Write the VGG-16 / ResNet-50 reference fixtures with real BVLC Caffe (pycaffe).

The small nets are the official deploy prototxts shipped in ``minicaffe/data/models`` with their
text transformed, not re-written: every ``num_output`` divided by 8 (VGG: 64/128/256/512/4096
-> 8/16/32/48/64, ResNet: 64/256/.../2048 -> 8/32/.../256), 10 classes, a smaller input (VGG 72x72,
where Caffe's ceil-mode 2x2 pooling gives 5x5 and 3x3 at pool4/pool5 where floor mode would give
4x4 and 2x2; ResNet 64x64, where pool1 gives 16x16 against floor mode's 15x15), batch 2, and
ResNet-50 cut to two blocks per stage (``a``: projection shortcut, ``b``: identity; the dropped
``c``..``f`` blocks are identity blocks like ``b``) with ``pool5`` over 2x2 instead of 7x7. VGG
stays in the gist's legacy V1 text format. Caffe builds each net, weights are seeded (He-normal
convolutions, BatchNorm statistics stored as ``mean * s``, ``var * s`` with a moving-average factor
``s`` drawn per layer in [0.5, 1000] and one layer with ``s = 0``, which Caffe reads as zero
statistics; the classifier scaled so the logits spread over a few units), Caffe runs the forward
and ``net.save`` writes the ``.caffemodel``. Written to ``tests/fixtures/caffe/``: ``CASE.prototxt``,
``CASE.caffemodel``, ``CASE_input.npy``, ``CASE_blobs.npz`` (every blob of the prototxt, after
in-place layers) and ``CASE.json``.

    MINICAFFE_CAFFE_BUILD=/work/caffe-build nice -n 19 python scripts/make_vgg_resnet_fixtures.py

It is run by hand where Caffe is built (see ../shared/tools/caffe); the tests only read its output.
``--table`` needs no Caffe: it prints the markdown table of docs/models.md (worst relative error
per blob, minicaffe's numpy and cpu backends against the saved Caffe blobs).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "minicaffe" / "data" / "models"
OUT = ROOT / "tests" / "fixtures" / "caffe"
SHARED = pathlib.Path(os.environ.get("MINICAFFE_SHARED", ROOT.parent / "shared"))
if not (SHARED / "tools" / "caffe").is_dir():
    SHARED = pathlib.Path("/work/shared")

#: ResNet-50 blocks left out of the small net, and the block each dropped run is replaced by
RESNET_DROP = {"2": ("c",), "3": ("c", "d"), "4": ("c", "d", "e", "f"), "5": ("c",)}
RESNET_LAST_KEPT = {"res2c": "res2b", "res3d": "res3b", "res4f": "res4b", "res5c": "res5b"}


def _scale_outputs(text, table):
    def sub(m):
        return f"{m.group(1)}{table[int(m.group(2))]}"
    return re.sub(r"(num_output:\s*)(\d+)", sub, text)


def _input_dims(text, dims):
    it = iter(dims)
    return re.sub(r"(input_dim:\s*)\d+", lambda m: f"{m.group(1)}{next(it)}", text)


def vgg_small_text():
    text = (MODELS / "vgg16.deploy.prototxt").read_text()
    text = text.replace('name: "VGG_ILSVRC_16_layers"', 'name: "VGG_ILSVRC_16_layers_small"', 1)
    text = _scale_outputs(text, {64: 8, 128: 16, 256: 32, 512: 48, 4096: 64, 1000: 10})
    return _input_dims(text, (2, 3, 72, 72))


def resnet_small_text():
    text = (MODELS / "resnet50.deploy.prototxt").read_text()
    head, *blocks = re.split(r"\n(?=layer \{)", text)
    dropped = "|".join(f"{s}{b}" for s, bs in RESNET_DROP.items() for b in bs)
    drop = re.compile(rf'name: "(?:res|bn|scale)({dropped})(?:_|")')
    kept = [b for b in blocks if not drop.search(b)]
    text = "\n".join([head] + kept)
    for old, new in RESNET_LAST_KEPT.items():
        text = text.replace(f'bottom: "{old}"', f'bottom: "{new}"')
    text = text.replace('name: "ResNet-50"', 'name: "ResNet-50-small"', 1)
    text = _scale_outputs(text, {64: 8, 128: 16, 256: 32, 512: 64, 1024: 128, 2048: 256, 1000: 10})
    text = re.sub(r"(pooling_param \{\s*kernel_size: )7(\s*stride: 1\s*pool: AVE)", r"\g<1>2\g<2>", text)
    return _input_dims(text, (2, 3, 64, 64))


def seed_weights(net, rng, zero_factor_layer=None):
    """Seeded parameters, layer by layer in net order; returns {layer: moving-average factor}."""
    factors = {}
    for name, layer in zip(net._layer_names, net.layers):
        blobs = layer.blobs
        if not len(blobs):
            continue
        t = layer.type
        if t == "Convolution":
            w = blobs[0].data
            fan_in = int(np.prod(w.shape[1:]))
            w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.standard_normal(blobs[1].data.shape) * 0.1
        elif t == "InnerProduct":
            w = blobs[0].data
            w[...] = rng.standard_normal(w.shape) * np.sqrt(1.0 / w.shape[1])
            blobs[1].data[...] = rng.standard_normal(blobs[1].data.shape) * 0.1
        elif t == "BatchNorm":
            C = blobs[0].data.shape[0]
            mean = rng.standard_normal(C) * 0.5
            var = rng.uniform(0.3, 3.0, C)
            s = 0.0 if name == zero_factor_layer else float(rng.uniform(0.5, 1000.0))
            blobs[0].data[...] = mean * s
            blobs[1].data[...] = var * s
            blobs[2].data[...] = s
            factors[name] = s
        elif t == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.standard_normal(blobs[1].data.shape) * 0.1
        else:
            raise SystemExit(f"{name}: no seeding rule for layer type {t}")
    return factors


def make(caffe, case, text, seed, zero_factor_layer=None):
    OUT.mkdir(parents=True, exist_ok=True)
    proto = OUT / f"{case}.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(seed)
    factors = seed_weights(net, rng, zero_factor_layer)
    x = (rng.standard_normal(net.blobs["data"].data.shape) * 30.0).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    # rescale the classifier so the logits spread over a few units: a saturated softmax (one-hot
    # prob) would make the prob blob a weak comparison
    fc = [n for n, l in zip(net._layer_names, net.layers) if l.type == "InnerProduct"][-1]
    logits = net.blobs[net.top_names[fc][0]].data - net.params[fc][1].data
    net.params[fc][0].data[...] *= 2.0 / max(float(logits.std()), 1e-12)
    net.forward()
    # Caffe inserts a Split layer where a blob feeds two layers; its tops (NAME_..._split_K) are
    # copies of the blob, not part of the net as written, so they are not saved
    blobs = {k: np.array(v.data, np.float32) for k, v in net.blobs.items() if not re.search(r"_split_\d+$", k)}
    net.save(str(OUT / f"{case}.caffemodel"))
    np.save(OUT / f"{case}_input.npy", x)
    np.savez_compressed(OUT / f"{case}_blobs.npz", **blobs)
    meta = {"case": case, "seed": seed, "input_shape": list(x.shape),
            "blob_shapes": {k: list(v.shape) for k, v in blobs.items()},
            "batchnorm_moving_average_factor": factors,
            "caffe": "BVLC Caffe from PyPI brocolli-caffe 9.0.2, CPU_ONLY, OpenBLAS, float32"}
    (OUT / f"{case}.json").write_text(json.dumps(meta, indent=1))
    size = sum((OUT / f).stat().st_size for f in (f"{case}.prototxt", f"{case}.caffemodel", f"{case}_input.npy",
                                                   f"{case}_blobs.npz", f"{case}.json"))
    print(f"{case}: {len(blobs)} blobs, {size / 1e6:.2f} MB, output {blobs['prob'].shape}")


def table():
    sys.path.insert(0, str(ROOT))
    from minicaffe import Net
    for case in ("vgg16_small", "resnet50_small"):
        z = np.load(OUT / f"{case}_blobs.npz")
        ref = {k: z[k] for k in z.files}
        x = np.load(OUT / f"{case}_input.npy")
        errs = {}
        for backend in ("numpy", "cpu"):
            out = Net(OUT / f"{case}.prototxt", OUT / f"{case}.caffemodel", backend=backend).forward(x)
            errs[backend] = {k: float(np.abs(out[k].astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-30))
                             for k, r in ref.items()}
        print(f"\n{case} (input {tuple(x.shape)})\n\n| blob | shape | numpy | cpu |\n|---|---|---|---|")
        for k, r in ref.items():
            print(f"| {k} | {'x'.join(map(str, r.shape))} | {errs['numpy'][k]:.1e} | {errs['cpu'][k]:.1e} |")
        for b in ("numpy", "cpu"):
            w = max(errs[b], key=errs[b].get)
            print(f"\nworst [{b}]: {w} {errs[b][w]:.2e}")


def main():
    if "--table" in sys.argv[1:]:
        return table()
    sys.path.insert(0, str(SHARED / "tools" / "caffe"))
    os.environ.setdefault("MINICAFFE_CAFFE_BUILD", "/work/caffe-build")
    from pycaffe_import import caffe
    make(caffe, "vgg16_small", vgg_small_text(), seed=16)
    make(caffe, "resnet50_small", resnet_small_text(), seed=50, zero_factor_layer="bn5b_branch2c")


if __name__ == "__main__":
    main()
