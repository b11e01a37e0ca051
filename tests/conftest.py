"""Shared test fixtures: paths to ../shared reference material and a comparison helper."""
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MINICAFFE_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "reference" / "caffe_fixtures"
MODELS = ROOT / "minicaffe" / "data" / "models"


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|, the project-wide comparison measure."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def assert_close(ours, ref, tol=1e-4, what=""):
    """Fail with max abs/rel error and where the worst element is."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    diff = np.abs(ours.astype(np.float64) - ref)
    idx = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    rel = rel_err(ours, ref) if diff.size else 0.0
    assert rel <= tol, (f"{what}: max abs err {diff.max():.3e} at {idx} (ours {ours[idx]:.6g}, ref {ref[idx]:.6g}), "
                        f"rel err {rel:.3e} > tol {tol:g}")
    return rel


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES
