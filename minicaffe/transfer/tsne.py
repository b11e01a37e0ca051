"""2-D t-SNE pictures of feature spaces, coloured by class: DeCAF's "feature visualisation".

:func:`tsne_embed` reduces (N, D) features to (N, 2) with scikit-learn's TSNE after
standardising and (for D > 50) a PCA to 50 dimensions, the usual recipe that keeps t-SNE fast
and stable; :func:`plot_tsne` draws one panel per feature set side by side (e.g. DeCAF vs
raw pixels vs HOG) into a PNG with matplotlib's non-interactive Agg backend. This module does not
compute features and does not quantify cluster quality (the classifiers do that).
"""
from __future__ import annotations

import numpy as np


def tsne_embed(X, seed=0, perplexity=30.0):
    """X: (N, D) -> (N, 2) float64 t-SNE embedding (PCA to 50 first when D > 50)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler
    X = StandardScaler().fit_transform(np.asarray(X, np.float64))
    if X.shape[1] > 50 and X.shape[0] > 50:
        X = PCA(n_components=50, random_state=seed).fit_transform(X)
    perplexity = min(perplexity, (X.shape[0] - 1) / 3.0)   # TSNE requires perplexity < N
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)


def plot_tsne(feature_sets, labels, class_names, path, title=None, seed=0):
    """feature_sets: {panel title: (N, D)}; labels: (N,) ints -> PNG at ``path`` (returns path)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = np.asarray(labels)
    n = len(feature_sets)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax, (name, X) in zip(axes[0], feature_sets.items()):
        Y = tsne_embed(X, seed=seed)
        for k, cname in enumerate(class_names):
            m = labels == k
            ax.scatter(Y[m, 0], Y[m, 1], s=9, color=cmap(k % cmap.N), label=cname, alpha=0.85, linewidths=0)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(class_names), 10), fontsize=8,
               markerscale=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
