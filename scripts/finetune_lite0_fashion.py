"""Fine-tune the pretrained EfficientNet-Lite0 on Fashion-MNIST with few labels; frozen vs refined.

Per seed: K labelled images per class (drawn from a fixed pool of --pool per class), a fixed
held-out set of --heldout per class (default 50: 500 images; 15 per class was too noisy to rank
methods a few points apart). Frozen features: Lite0's ``pool`` (1280-d) + logistic regression (the
transfer protocol's classifier, C by CV). Refined: replace ``fc`` with a 10-way layer, train
``--train-from`` onward (default ``block15/expand``: the last MBConv block + 1x1 head conv + fc;
``conv_head`` trains only the head) with Caffe-style SGD, then (a) the refined net's own accuracy
and (b) refined ``pool`` features + the same logistic regression. Images are 28x28 grey, upsampled
to --size (default 128, not the native 224: 2 shared CPU cores; stated in the docs). Prints a JSON
summary and writes docs/finetune_loss.png. Run: python scripts/finetune_lite0_fashion.py
"""
import argparse
import json
import sys
import time

import numpy as np

from minicaffe.finetuning import build_finetune_net, cached_cut_features, predict, train
from minicaffe.models import Preprocessing, get_model
from minicaffe.preprocess import preprocess_image
from minicaffe.transfer.offline import load_fashion_mnist
from minicaffe.transfer.protocols import fit_score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--pool", type=int, default=20, help="labelled candidates per class")
    ap.add_argument("--heldout", type=int, default=50, help="held-out test images per class")
    ap.add_argument("--train-from", default="block15/expand")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--png", default="docs/finetune_loss.png")
    a = ap.parse_args()
    spec = get_model("efficientnet-lite0")
    base = spec.load(backend="numpy")
    pre = Preprocessing(resize=a.size + a.size // 7, crop=a.size, channel_order="RGB",
                        mean_values=(127.0,) * 3, std_values=(128.0,) * 3, interpolation="bicubic")
    if a.per_class > a.pool:
        sys.exit(f"{sys.argv[0]}: --per-class {a.per_class} exceeds --pool {a.pool}")
    ds = load_fashion_mnist(per_class=a.pool + a.heldout, seed=0)
    y = np.asarray(ds.labels)
    pool_idx = {c: np.flatnonzero(y == c) for c in range(10)}
    test = np.concatenate([v[a.pool:] for v in pool_idx.values()])
    cand = {c: v[:a.pool] for c, v in pool_idx.items()}
    text = base.prototxt_text.replace("dim: 224", f"dim: {a.size}")
    net, fc = build_finetune_net(text, dict(base.params), 10, "fc", "cpu", seed=0)
    t0 = time.time()
    X = np.stack([preprocess_image(im, pre) for im in ds.items])
    cut = cached_cut_features(net, (X[i:i + 16] for i in range(0, len(X), 16)), a.train_from)
    t_cache = time.time() - t0
    print(f"cut features {cut.shape} in {t_cache:.0f}s", file=sys.stderr)
    orig = {k: [w.copy() for w in v] for k, v in net.params.items()}
    frozen_pool = predict(net, cut, a.train_from, "fc", fetch=("pool",))["pool"]
    rows, curves = [], []
    for seed in range(a.seeds):
        rng = np.random.default_rng(100 + seed)
        tr = np.concatenate([rng.choice(cand[c], a.per_class, replace=False) for c in range(10)])
        for k, v in orig.items():              # restart from the pretrained weights
            for w, w0 in zip(net.params[k], v):
                w[...] = w0
        net.params[fc] = [(np.random.default_rng(seed).standard_normal(net.params[fc][0].shape) * 0.01)
                          .astype(np.float32), np.zeros_like(net.params[fc][1])]
        acc_frozen, _ = fit_score(frozen_pool[tr], y[tr], frozen_pool[test], y[test], kind="lr", seed=seed)
        t1 = time.time()
        losses = train(net, cut[tr], y[tr], a.train_from, fc, iters=a.iters, batch=25, base_lr=a.lr,
                       momentum=0.9, weight_decay=5e-4, seed=seed, lr_mult={fc: 10.0})
        t_train = time.time() - t1
        got = predict(net, cut[test], a.train_from, "fc")["fc"]
        acc_net = float(np.mean([np.mean(got[y[test] == c].argmax(1) == c) for c in range(10)]))
        ref_tr = predict(net, cut[tr], a.train_from, "fc", fetch=("pool",))["pool"]
        ref_te = predict(net, cut[test], a.train_from, "fc", fetch=("pool",))["pool"]
        acc_refined, _ = fit_score(ref_tr, y[tr], ref_te, y[test], kind="lr", seed=seed)
        rows.append({"seed": seed, "frozen+LR": acc_frozen, "refined net": acc_net, "refined+LR": acc_refined,
                     "train_s": t_train, "images_per_s_fwd_bwd": a.iters * 25 / t_train})
        curves.append(losses)
        print(json.dumps(rows[-1]), file=sys.stderr)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    std = {k: float(np.std([r[k] for r in rows])) for k in ("frozen+LR", "refined net", "refined+LR")}
    print(json.dumps({"args": vars(a), "rows": rows, "mean": mean, "std": std, "cache_s": t_cache}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for s, c in enumerate(curves):
        ax.plot(c, alpha=0.8, label=f"seed {s}")
    ax.set_xlabel("iteration (batch 25)")
    ax.set_yscale("log")  # the loss falls over four decades on a few labels
    ax.set_ylabel("softmax loss (training batch)")
    ax.set_title(f"Lite0 fine-tuned from {a.train_from}, Fashion-MNIST {a.per_class}/class", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.png, dpi=100)


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    main()
