"""Known near-duplicates from real photos: the collection the search tests (and docs) use.

Six real photos that ship with scikit-image / scikit-learn, each with three transformed copies
(mirror, central crop, strong JPEG re-encoding) that are its near-duplicates by construction.
:func:`make_collection` writes them into one flat folder; ``GROUP`` of a file name is its photo.
A seventh transformation (rotation + downscale) is kept out of the folder as a query only.
"""
import io
import os

import numpy as np

PHOTOS = [("skimage", "chelsea.png"), ("skimage", "coffee.png"), ("skimage", "astronaut.png"),
          ("skimage", "rocket.jpg"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg")]
COPIES = ("flip", "crop", "jpeg")


def source_path(kind, name):
    if kind == "skimage":
        import skimage.data
        return os.path.join(skimage.data.data_dir, name)
    import sklearn.datasets
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)


def transform(im, how):
    """PIL RGB image -> its transformed copy."""
    from PIL import Image, ImageOps
    if how == "flip":
        return ImageOps.mirror(im)
    if how == "crop":                               # the central 80% of each side
        w, h = im.size
        return im.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    if how == "jpeg":                               # heavy compression artefacts
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=20)
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    if how == "rot":                                # a query-only copy: rotated, then at 60% size
        r = im.rotate(8, resample=Image.BICUBIC, expand=False)
        return r.resize((int(im.width * 0.6), int(im.height * 0.6)), Image.BICUBIC)
    raise ValueError(how)


def stem(name):
    return os.path.splitext(name)[0]


def make_collection(folder, queries_folder=None):
    """Write originals + copies (PNG) into ``folder`` -> {file name: photo stem}; rotated query
    copies go to ``queries_folder`` when given."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    group = {}
    for kind, name in PHOTOS:
        im = Image.open(source_path(kind, name)).convert("RGB")
        s = stem(name)
        items = [(f"{s}.png", im)] + [(f"{s}_{how}.png", transform(im, how)) for how in COPIES]
        for fn, x in items:
            x.save(os.path.join(folder, fn))
            group[fn] = s
        if queries_folder:
            os.makedirs(queries_folder, exist_ok=True)
            transform(im, "rot").save(os.path.join(queries_folder, f"{s}_rot.png"))
    return group


def group_recall(paths, rows, group):
    """rows: (N, k) neighbour rows of each row (itself excluded) -> mean fraction of each
    image's group mates (3 here) found in its top k."""
    g = np.asarray([group[os.path.basename(p)] for p in paths])
    out = []
    for i, r in enumerate(rows):
        mates = int((g == g[i]).sum()) - 1
        out.append(sum(g[j] == g[i] for j in r if j >= 0) / max(1, min(mates, len(r))))
    return float(np.mean(out))
