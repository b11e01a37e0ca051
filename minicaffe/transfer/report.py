"""Markdown tables of transfer results, next to the numbers the DeCAF paper published.

:data:`PAPER` holds the published figures (Donahue et al., DeCAF, ICML 2014; mean per-class
accuracy in %, ± std over splits where the paper gives one). :func:`results_table` lays out a
list of :class:`~minicaffe.transfer.protocols.Result` as one Markdown table with a "paper"
column filled where a published number matches the row (same protocol, feature and
classifier; a layer-choice row adds how often each candidate was chosen); :func:`paired_table`
gives per-split paired differences of deep features minus each baseline. :func:`save_json`
keeps the raw per-split numbers. This module computes nothing.
"""
from __future__ import annotations

import json

import numpy as np

#: (protocol, feature, classifier) -> published mean per-class accuracy string (%)
PAPER = {
    ("caltech101", "decaf6", "SVM + dropout"): "86.91 ± 0.7",
    ("caltech101", "decaf6", "LogReg"): "84.30 ± 1.6",
    ("sun397", "decaf6", "LogReg"): "40.94 ± 0.3",
    ("office:amazon->webcam", "decaf6", "source (SVM)"): "52.22",
    ("office:amazon->webcam", "decaf6", "source+target (SVM)"): "80.66",
    ("office:amazon->webcam", "decaf6", "daume (SVM)"): "82.14",
    ("cub200:bbox", "decaf6", "LogReg"): "58.75",
}

PAPER_NOTES = {
    "caltech101": "30 training images per class, the rest tested, 5 splits; CaffeNet DeCAF features.",
    "sun397": "50/50 per class over the official partitions.",
    "office": "Saenko et al. protocol, 31 classes; the paper's hand-crafted baseline is SURF bag of words.",
    "cub200": "the paper's 58.75 uses the ground-truth box enlarged 1.5x at train and test time.",
}


def fmt_pct(mean, std=None, n=1):
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None and n > 1 else "")


def markdown_table(headers, rows):
    """headers: [str]; rows: [[cell]] -> Markdown text (no trailing newline)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    # a select:A|B spec holds "|", which would end the cell
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def chosen_counts(chosen):
    """["b", "a", "b"] -> "b 2/3, a 1/3" (most chosen first, ties in order of first appearance)."""
    names = list(dict.fromkeys(chosen))
    names.sort(key=lambda n: -chosen.count(n))
    return ", ".join(f"{n} {chosen.count(n)}/{len(chosen)}" for n in names)


def results_table(results, protocol=None, paper=True):
    """[Result] (with .features / .classifier set) -> Markdown table: features, classifier,
    accuracy (mean ± std, %), splits, C chosen, paper."""
    headers = ["features", "classifier", "mean per-class acc. (%)", "splits", "C (CV)"]
    if paper and protocol is not None:
        headers.append("paper (CaffeNet)")
    rows = []
    for r in results:
        cs = sorted({n.split(" ")[0] for n in r.notes})
        feat = r.features + (f" (chosen: {chosen_counts(r.chosen)})" if r.chosen else "")
        row = [feat, r.classifier, fmt_pct(r.mean, r.std, len(r.per_split)), len(r.per_split),
               ", ".join(cs)]
        if paper and protocol is not None:
            key_feat = r.features.split(" ")[0]
            row.append(PAPER.get((protocol, key_feat, r.classifier), ""))
        rows.append(row)
    return markdown_table(headers, rows)


def paired_table(results, baselines):
    """[Result] -> Markdown table of per-split paired differences, deep minus baseline, for
    every deep result against every baseline result with the same classifier (the protocols
    give every feature set the same splits, so split s of one row is split s of the other):
    mean ± std of the differences (points), the smallest difference, and wins / ties / losses.
    Empty string when there is nothing to pair."""
    base = {(r.features, r.classifier): r for r in results if r.features in baselines}
    rows = []
    for r in results:
        if r.features in baselines:
            continue
        for b in baselines:
            o = base.get((b, r.classifier))
            if o is None or len(o.per_split) != len(r.per_split):
                continue
            d = 100 * (np.asarray(r.per_split) - np.asarray(o.per_split))
            # equal accuracies can differ by float rounding only: |d| <= 0.005 points is a tie
            w, t = int(np.sum(d > 5e-3)), int(np.sum(np.abs(d) <= 5e-3))
            rows.append([r.features, r.classifier, b, f"{d.mean():+.2f} ± {d.std():.2f}", f"{d.min():+.2f}",
                         f"{w} / {t} / {len(d) - w - t}"])
    if not rows:
        return ""
    return markdown_table(["features", "classifier", "minus", "paired diff. (points)", "min", "wins / ties / losses"],
                          rows)


def save_json(path, sections):
    """sections: {title: [Result]} -> JSON with every per-split number."""
    data = {title: [{"features": r.features, "classifier": r.classifier, "mean": r.mean, "std": r.std,
                     "per_split": r.per_split, "notes": r.notes, **({"chosen": r.chosen} if r.chosen else {})}
                    for r in results]
            for title, results in sections.items()}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path
