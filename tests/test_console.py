"""The ``minicaffe TOOL`` dispatcher (console command and ``python -m minicaffe``): every tool it
lists exists and answers ``--help``, unknown tools are one error line with exit 2, and arguments
reach the tool unchanged."""
import subprocess
import sys

import pytest

from minicaffe.__main__ import TOOLS


def _run(*args):
    return subprocess.run([sys.executable, "-m", "minicaffe", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_usage_lists_every_tool():
    r = _run("--help")
    assert r.returncode == 0
    for name in TOOLS:
        assert name in r.stdout


@pytest.mark.parametrize("tool", ["extract", "search", "pycaffe", "weights"])
def test_tool_help_goes_through(tool):
    r = _run(tool, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage" in (r.stdout + r.stderr).lower()


def test_unknown_tool_is_one_error_line():
    r = _run("extrct")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "minicaffe: error: unknown tool 'extrct'"
    assert "Traceback" not in r.stderr


def test_arguments_reach_the_tool():
    r = _run("weights", "fetch", "no-such-model")
    assert r.returncode == 2
    assert "no-such-model" in r.stderr and "Traceback" not in r.stderr
