"""Training speed: images/s of forward+backward (input and parameter gradients), minicaffe cpu vs
PyTorch (the torch translator of the same prototxt, same threads) in the same run; min of repeats.

Run: python scripts/train_speed.py [--model caffenet-small|efficientnet-lite0] [--batch 16]
"""
import argparse
import pathlib
import time

import numpy as np
import torch

from minicaffe import Net
from minicaffe.reference.torch_net import build_torch_net

FIX = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "caffe_fixtures"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="caffenet-small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.model == "caffenet-small":
        proto, weights, out = str(FIX / "caffenet_small.prototxt"), str(FIX / "caffenet_small.caffemodel"), "fc8"
        size = 227
    else:
        from minicaffe.models import get_model
        spec = get_model(a.model)
        w = spec.load(backend="numpy")
        proto, weights, out, size = spec.prototxt, w.params, "fc", spec.input_size
    net = Net(proto, weights, backend="cpu")
    net.set_phase("TRAIN")
    x = np.random.default_rng(0).standard_normal((a.batch, 3, size, size)).astype(np.float32)

    def ours():
        o = net.forward(x)[out]
        net.backward({out: np.ones_like(o)})

    tnet = build_torch_net(proto, weights)

    def theirs():
        xt = torch.from_numpy(x).requires_grad_(True)
        tnet.zero_grad()
        tnet(xt)[out].sum().backward()

    res = {}
    for name, f in (("minicaffe cpu", ours), ("torch", theirs)):
        f()  # warm-up (JIT compile / allocator)
        ts = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        res[name] = a.batch / min(ts)
    print(f"{a.model}, batch {a.batch}, torch threads {torch.get_num_threads()}: forward+backward images/s")
    for k, v in res.items():
        print(f"  {k:14s} {v:8.1f}")
    print(f"  ratio minicaffe/torch {res['minicaffe cpu'] / res['torch']:.2f}")


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    main()
