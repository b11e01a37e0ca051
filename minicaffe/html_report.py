"""Static, self-contained HTML reports: one page of thumbnails, tables and charts that opens from disk.

A report is a title and a list of sections: :class:`Text`, :class:`Table`, :class:`Gallery`
(images with captions), :class:`Neighbours` (a query image beside its ranked matches) and
:class:`Figure` (an existing PNG such as a profile or t-SNE chart, or any image at full size).
:func:`render_html` / :func:`write_html` turn them into one HTML file in which every image is
embedded as a ``data:`` URI (photos as JPEG thumbnails, figures as their own bytes), styled by
inline CSS, with a Content-Security-Policy that forbids any network fetch: no CDN, no server, no
sidecar files. A small inline script writes, after the page loads, how many images decoded into
the element ``#report-status`` (``data-state`` ``ok`` or ``broken``), which
:func:`browser_check` reads back from a real headless Chromium. An image that cannot be read
becomes a captioned placeholder and a warning (:class:`~minicaffe.errors.MinicaffeWarning`); the
rest of the report is still written. This module computes nothing about the images and parses no
arguments; its callers (search, explain, profile, the ``report`` command) build the sections.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import shutil
import subprocess
import tempfile
import warnings

import numpy as np

from .errors import MinicaffeWarning

#: the page may only use what it carries: inline style and script, data: images
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_MIME = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
         b"GIF89a": "image/gif"}


# ---------------------------------------------------------------------------------- sections
@dataclasses.dataclass
class Thumb:
    """One image in a gallery. ``image``: a path, an (H, W, 3) / (H, W) array (uint8, or float in
    0..1) or a PIL image; ``caption``: text under it (e.g. the path); ``note``: a short emphasised
    line (e.g. a score); ``highlight``: framed (e.g. the query)."""
    image: object
    caption: str = ""
    note: str = ""
    highlight: bool = False


@dataclasses.dataclass
class Gallery:
    """A wrapping row of thumbnails with captions."""
    items: list
    title: str | None = None
    text: str | None = None


@dataclasses.dataclass
class Neighbours:
    """A query thumbnail (framed) followed by its ranked matches (captions carry the scores)."""
    query: Thumb
    hits: list
    title: str | None = None


@dataclasses.dataclass
class Table:
    """headers: [str]; rows: [[cell]] (cells are shown with ``str``; floats with 4 decimals)."""
    headers: list
    rows: list
    title: str | None = None
    caption: str | None = None


@dataclasses.dataclass
class Figure:
    """An image at its own size (scaled down to the page width): a PNG chart path, an array, a PIL image."""
    image: object
    caption: str = ""
    title: str | None = None


@dataclasses.dataclass
class Text:
    """A paragraph of plain text (blank lines start new paragraphs)."""
    text: str
    title: str | None = None


# ---------------------------------------------------------------------------------- images
def _sniff(data):
    for magic, mime in _MIME.items():
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _to_pil(image):
    from PIL import Image, ImageOps
    if isinstance(image, Image.Image):
        im = image
    elif isinstance(image, (str, os.PathLike)):
        im = Image.open(image)
        im.load()
        im = ImageOps.exif_transpose(im)
    else:
        a = np.asarray(image)
        if a.dtype != np.uint8:
            a = np.asarray(a, np.float64)
            if not np.isfinite(a).all():
                raise ValueError("array contains NaN or infinity")
            a = a * 255.0 if a.size and a.max() <= 1.0 else a     # float images in 0..1 or 0..255
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
            raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {a.shape}")
        im = Image.fromarray(a)
    return im


def data_uri(image, max_side=None, quality=85):
    """image (path, array, PIL image) -> ``data:image/...;base64,...``.

    ``max_side`` None: a PNG/JPEG/GIF/WebP file is embedded byte for byte, other inputs as PNG.
    Otherwise the image is shrunk to fit ``max_side`` pixels (aspect kept) and embedded as JPEG
    (PNG when it has transparency). Raises OSError/ValueError for an unreadable image.
    """
    if max_side is None and isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
        mime = _sniff(data)
        if mime:
            return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    im = _to_pil(image)
    if max_side is not None:
        im = im.copy()
        im.thumbnail((int(max_side), int(max_side)))
    buf = io.BytesIO()
    alpha = im.mode in ("RGBA", "LA", "P") and (im.mode != "P" or "transparency" in im.info)
    if max_side is None or alpha:
        im.save(buf, "PNG", optimize=True)
        mime = "image/png"
    else:
        im.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------- rendering
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}.sub{color:#666;margin:0 0 12px}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;width:{W}px;box-sizing:content-box}
.card.hl{border:3px solid #2f6fde;padding:4px}
.card .img{width:{W}px;height:{W}px;display:flex;align-items:center;justify-content:center;background:#f0f0f0}
.card img{width:{W}px;height:{W}px;object-fit:contain}
.note{font-weight:600;margin-top:4px}.cap{color:#555;font-size:12px;word-break:break-all}
.missing{color:#a00;font-size:12px;padding:8px;text-align:center}
.sep{align-self:center;font-size:26px;color:#999;padding:0 4px}
table{border-collapse:collapse;background:#fff;margin:6px 0}\
th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:8px 0}figure img{max-width:100%;background:#fff;border:1px solid #ddd}figcaption{color:#555}
#report-status{color:#888;font-size:12px;margin-top:32px}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0, bad = [];
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } else { bad.push(imgs[i].alt || String(i)); }
  }
  var s = document.getElementById("report-status");
  s.setAttribute("data-state", bad.length ? "broken" : "ok");
  s.setAttribute("data-loaded", String(ok));
  s.setAttribute("data-total", String(imgs.length));
  s.textContent = ok + " of " + imgs.length + " images loaded" + (bad.length ? "; not loaded: " + bad.join(", ") : "");
});
"""


def _esc(s):
    return html.escape(str(s), quote=True)


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return f'<td class="num">{float(v):.4f}</td>'
    if isinstance(v, (int, np.integer)):
        return f'<td class="num">{int(v)}</td>'
    return f"<td>{_esc(v)}</td>"


class _Renderer:
    def __init__(self, thumb, on_error):
        self.thumb, self.on_error = int(thumb), on_error

    def img(self, image, alt, max_side):
        try:
            uri = data_uri(image, max_side)
        except (OSError, ValueError, SyntaxError) as e:   # PIL raises SyntaxError for some corrupt files
            what = image if isinstance(image, (str, os.PathLike)) else f"<{type(image).__name__}>"
            msg = f"{what}: cannot read the image ({e.__class__.__name__}: {e})"
            self.on_error(image, msg)
            return f'<div class="missing">{_esc(msg)}</div>'
        return f'<img src="{uri}" alt="{_esc(alt)}">'

    def card(self, t):
        cls = "card hl" if t.highlight else "card"
        note = f'<div class="note">{_esc(t.note)}</div>' if t.note else ""
        cap = f'<div class="cap">{_esc(t.caption)}</div>' if t.caption else ""
        return (f'<div class="{cls}"><div class="img">{self.img(t.image, t.caption or t.note, self.thumb)}</div>'
                f"{note}{cap}</div>")

    def section(self, s):
        head = f"<h2>{_esc(s.title)}</h2>" if getattr(s, "title", None) else ""
        if isinstance(s, Text):
            return head + "".join(f"<p>{_esc(p.strip())}</p>" for p in s.text.split("\n\n") if p.strip())
        if isinstance(s, Table):
            cap = f"<caption>{_esc(s.caption)}</caption>" if s.caption else ""
            rows = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in s.rows)
            return (f"{head}<table>{cap}<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in s.headers)
                    + f"</tr>{rows}</table>")
        if isinstance(s, Gallery):
            text = f"<p>{_esc(s.text)}</p>" if s.text else ""
            return f'{head}{text}<div class="row">' + "".join(self.card(t) for t in s.items) + "</div>"
        if isinstance(s, Neighbours):
            q = dataclasses.replace(s.query, highlight=True)
            return (f'{head}<div class="row">{self.card(q)}<div class="sep">&rarr;</div>'
                    + "".join(self.card(t) for t in s.hits) + "</div>")
        if isinstance(s, Figure):
            cap = f"<figcaption>{_esc(s.caption)}</figcaption>" if s.caption else ""
            return f"{head}<figure>{self.img(s.image, s.caption or s.title or 'figure', None)}{cap}</figure>"
        raise TypeError(f"not a report section: {type(s).__name__}")


def _warn(image, msg):
    warnings.warn(msg, MinicaffeWarning, stacklevel=2)


def render_html(title, sections, subtitle=None, thumb=160, on_error=None):
    """title: str; sections: [Text | Table | Gallery | Neighbours | Figure] -> the HTML page (str).

    ``thumb``: the side of gallery thumbnails in pixels; ``on_error(image, message)`` is called
    for each unreadable image (default: a :class:`~minicaffe.errors.MinicaffeWarning`), which becomes a
    placeholder.
    """
    r = _Renderer(thumb, on_error or _warn)
    body = "\n".join(r.section(s) for s in sections)
    sub = f'<p class="sub">{_esc(subtitle)}</p>' if subtitle else ""
    css = _CSS.replace("{W}", str(int(thumb)))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title><style>{css}</style></head>\n<body>\n<h1>{_esc(title)}</h1>{sub}\n"
            f'{body}\n<p id="report-status" data-state="pending">images not checked yet</p>\n'
            f"<script>{_SCRIPT}</script>\n</body></html>\n")


def write_html(path, title, sections, subtitle=None, thumb=160, on_error=None):
    """:func:`render_html` written to ``path`` (temporary name, then renamed) -> path."""
    page = render_html(title, sections, subtitle, thumb, on_error)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------- browser check
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser():
    """The path of a Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        p = shutil.which(name)
        if p:
            return p
    return None


def _chromium(browser, profile, *args, timeout):
    # --disable-dev-shm-usage: containers often have a tiny /dev/shm, where Chromium's renderer crashes
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def browser_check(html_path, screenshot=None, size=(1280, 1600), browser=None, timeout=120):
    """Open ``html_path`` from disk in headless Chromium -> dict(state, loaded, total, screenshot,
    dom, returncode, stderr).

    ``state`` is what the page's own script wrote after load (``ok``: every <img> decoded;
    ``broken``; ``pending``: the script did not run; ``missing``: no status element, e.g. the
    browser did not start: see ``returncode`` and ``stderr``). With ``screenshot`` a PNG of the
    first ``size`` (width, height) pixels is written there. Raises FileNotFoundError without a
    browser, subprocess.TimeoutExpired when it hangs past ``timeout`` seconds.
    """
    import re
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium-family browser on PATH (" + ", ".join(BROWSERS) + ")")
    url = "file://" + os.path.abspath(html_path)
    with tempfile.TemporaryDirectory(prefix="minicaffe-chromium-") as profile:
        out = _chromium(browser, profile, "--dump-dom", url, timeout=timeout)
        dom = out.stdout
        if screenshot:
            _chromium(browser, profile, f"--screenshot={os.path.abspath(screenshot)}",
                      f"--window-size={size[0]},{size[1]}", url, timeout=timeout)
    m = re.search(r'<p id="report-status"([^>]*)>', dom)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', m.group(1))) if m else {}
    return {"state": attrs.get("state", "missing"), "loaded": int(attrs.get("loaded", -1)),
            "total": int(attrs.get("total", -1)), "screenshot": screenshot if screenshot else None,
            "dom": dom, "returncode": out.returncode, "stderr": out.stderr}
