"""docs/pycaffe.md's "classify an image, extract fc7" code runs as written (full-size CaffeNet,
seeded stand-in weights: slow), in a fresh interpreter in a temporary folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "pycaffe.md")


def _section_code():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Classify an image, extract fc7", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_doc_has_the_notebook_blocks():
    blocks = _section_code()
    assert len(blocks) == 2 and "caffe.Net(model_def" in blocks[1] and "net.blobs['fc7']" in blocks[1]


@pytest.mark.slow
def test_doc_code_runs_as_written(tmp_path):
    pytest.importorskip("skimage")
    code = "\n".join(_section_code())
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "predicted class is:" in out
    assert "fc7: (4096,)" in out
    assert "fc8\t(1000, 4096) (1000,)" in out
    assert "data\t(1, 3, 227, 227)" in out
