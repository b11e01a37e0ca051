"""``minicaffe.report``: self-contained HTML pages, checked as text and in a real headless browser.

The text checks parse the page: every <img> is a data: URI that decodes to the image it was
given, nothing points off the page, captions are escaped, an unreadable image becomes a
placeholder. The browser test opens the page from disk in Debian's Chromium (skipped, with the
reason, where none is installed), reads back what the page's own script found (every image
decoded) and checks the screenshot is not blank; a page with one corrupted image is the control
that shows the check can fail.
"""
import base64
import io
import os
import re
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import lazy_importorskip
from PIL import Image

from minicaffe import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "docs", "profile_caffenet_cpu.png")     # an existing chart of the project
skdata = lazy_importorskip("skimage.data")     # only the tests that draw a photo need it


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(page):
    p = Tags()
    p.feed(page)
    return p.tags


def decode(uri):
    head, b64 = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64"), head[:40]
    return base64.b64decode(b64)


def sections(photo_dir=None):
    cat = os.path.join(skdata.data_dir, "chelsea.png")
    coffee = os.path.join(skdata.data_dir, "coffee.png")
    gray = np.linspace(0, 1, 64 * 96).reshape(64, 96)                 # float in 0..1, (H, W)
    return [
        report.Text("Two paragraphs.\n\nThe second <one> & more.", title="About"),
        report.Table(["name", "score", "rank"], [["chelsea <b>", 0.98765, 1], ["coffee", 0.5, 2]], title="Scores"),
        report.Neighbours(report.Thumb(cat, "chelsea.png", "query"),
                          [report.Thumb(coffee, "coffee.png", "#1  0.3000"),
                           report.Thumb(skdata.astronaut(), "astronaut (array)", "#2  0.2000")], title="Nearest"),
        report.Gallery([report.Thumb(gray, "gray ramp"), report.Thumb(Image.open(coffee), "PIL image")],
                       title="Gallery", text="arrays and PIL images too"),
        report.Figure(CHART, "an existing profile chart, embedded byte for byte", title="Profile"),
    ]


def test_page_is_self_contained_and_escaped():
    page = report.render_html("Report <title>", sections(), subtitle="sub & title", thumb=120)
    tags = parse(page)
    imgs = [a for t, a in tags if t == "img"]
    assert len(imgs) == 6, f"expected 6 images, found {len(imgs)}"
    for a in imgs:
        Image.open(io.BytesIO(decode(a["src"]))).verify()
    for t, a in tags:
        for k in ("src", "href"):
            v = a.get(k, "")
            assert not v or v.startswith("data:"), f"<{t} {k}={v[:60]!r}> points off the page"
        assert t not in ("link", "iframe", "object", "embed"), f"<{t}> on a self-contained page"
    assert re.search(r"Content-Security-Policy\" content=\"default-src 'none'", page)
    assert "chelsea &lt;b&gt;" in page and "<b>" not in page and "The second &lt;one&gt; &amp; more." in page
    assert "Report &lt;title&gt;" in page and "0.9877" in page


def test_thumbnails_are_shrunk_and_figures_kept_byte_for_byte():
    page = report.render_html("t", sections(), thumb=100)
    imgs = [a for t, a in parse(page) if t == "img"]
    sizes = [Image.open(io.BytesIO(decode(a["src"]))).size for a in imgs[:-1]]
    assert all(max(s) <= 100 for s in sizes), sizes
    assert sizes[0] == (100, 67), sizes[0]      # chelsea 451x300, aspect kept
    with open(CHART, "rb") as f:
        assert decode(imgs[-1]["src"]) == f.read(), "the figure PNG was re-encoded"


def test_unreadable_image_is_a_placeholder(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    errors = []
    page = report.render_html("t", [report.Gallery([report.Thumb(str(bad), "broken"),
                                                    report.Thumb(skdata.chelsea(), "ok")])],
                              on_error=lambda img, msg: errors.append(msg))
    assert len(errors) == 1 and "broken.jpg" in errors[0], errors
    assert page.count("<img ") == 1 and 'class="missing"' in page and "broken.jpg: cannot read" in page


def test_write_html_replaces_atomically(tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    assert report.write_html(str(out), "t", [report.Text("x")]) == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>") and not list(tmp_path.glob("*.tmp*"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = report.find_browser()
    if b is None:
        pytest.skip("no Chromium-family browser installed (apt-get install chromium); "
                    "the HTML was still checked as text")
    # a browser that cannot start here (no usable sandbox-less mode, no display libraries) is no
    # verdict on the page: probe it once with an empty page
    probe = tmp_path_factory.mktemp("probe") / "empty.html"
    report.write_html(str(probe), "probe", [])
    try:
        r = report.browser_check(str(probe), browser=b)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{b} did not answer within the timeout")
    if r["state"] != "ok":
        pytest.skip(f"{b} did not render an empty page (exit {r['returncode']}): "
                    f"{r['stderr'].strip().splitlines()[-1:] or 'no message'}")
    return b


def test_report_renders_in_headless_browser(browser, tmp_path):
    page = str(tmp_path / "report.html")
    report.write_html(page, "Browser check", sections(), thumb=140)
    shot = str(tmp_path / "shot.png")
    r = report.browser_check(page, shot, size=(1100, 1400), browser=browser)
    assert (r["state"], r["loaded"], r["total"]) == ("ok", 6, 6), (r["state"], r["loaded"], r["total"],
                                                                   r["stderr"][-2000:])
    px = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    assert px.shape[:2] == (1400, 1100), px.shape
    std = px.std()
    # a blank page is one colour (std 0); photos, text and charts give tens of grey levels
    assert std > 20, f"screenshot looks blank: pixel std {std:.2f}"
    # the thumbnails are really painted: the query card's pixels differ from the page background
    assert len(np.unique(px.reshape(-1, 3)[::97], axis=0)) > 500, "too few colours for a page of photos"


def test_browser_check_catches_a_broken_image(browser, tmp_path):
    page = report.render_html("control", sections()[2:3])
    uri = re.search(r'src="(data:image/jpeg;base64,[^"]+)"', page).group(1)
    broken = page.replace(uri, "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xffjunk").decode(), 1)
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    r = report.browser_check(str(path), browser=browser)
    assert (r["state"], r["loaded"], r["total"]) == ("broken", 2, 3), (r["state"], r["loaded"], r["total"])


def test_report_command_embeds_existing_charts(tmp_path):
    """python -m minicaffe.report: the project's own t-SNE and profile charts on one page, byte
    for byte; rendered in a headless browser where one is installed; bad input is one error line."""
    import subprocess
    import sys
    tsne = os.path.join(ROOT, "docs", "transfer_tsne.png")
    out = tmp_path / "charts.html"
    r = subprocess.run([sys.executable, "-m", "minicaffe.report", str(out), "--title", "charts",
                        "--image", f"{tsne}=t-SNE of the deep features", "--image", CHART],
                       capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    import base64
    for png in (tsne, CHART):
        with open(png, "rb") as f:
            assert base64.b64encode(f.read()).decode() in page, f"{png} not embedded byte for byte"
    assert "t-SNE of the deep features" in page
    r = subprocess.run([sys.executable, "-m", "minicaffe.report", str(out), "--image", "missing.png"],
                       capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.splitlines() == ["minicaffe: error: --image missing.png: no such file"]
    if report.find_browser() is None:
        pytest.skip("no Chromium-family browser installed: the page was checked as text only")
    res = report.browser_check(str(out))
    if res["state"] == "missing":
        pytest.skip(f"the browser could not render: {res.get('stderr', '')[:200]}")
    assert res["state"] == "ok" and res["loaded"] == res["total"] == 2, res
