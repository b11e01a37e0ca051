"""The cuda backend on the small CaffeNet fixture under the simulator (started in the background
by conftest.py; named zz so it is collected last and waits the least)."""
import json

import pytest


@pytest.mark.slow
def test_cuda_backend_small_caffenet_matches_caffe(cudasim_caffenet):
    if "proc" not in cudasim_caffenet:
        pytest.skip("background simulator run not started (MINICAFFE_SKIP_CUDASIM_NET set or fixtures missing)")
    p = cudasim_caffenet["proc"]
    _, err = p.communicate(timeout=1500)
    assert p.returncode == 0, err.decode()[-2000:]
    with open(cudasim_caffenet["out"]) as f:
        res = json.load(f)
    assert res["ok"], res.get("error")
    print(f"\ncuda (simulator) vs Caffe, caffenet_small @227, image 0, {res['seconds']:.0f} s:")
    for k, v in res["rel_err"].items():
        print(f"  {k:6s} {v:.2e}")
    bad = {k: v for k, v in res["rel_err"].items() if v > 1e-4}
    assert not bad, f"blobs over 1e-4 relative: {bad}"
    assert len(res["rel_err"]) == 15
