"""Process tuning (minicaffe/runtime.py): ``import minicaffe`` changes nothing; ``tune`` applies each
part unless the user chose otherwise; ``Net``'s first forward tunes unless told not to.

Every check runs in a fresh interpreter (the settings are process-wide and applied once) and reads
the state back from the libraries themselves, never from timings: the environment, NumPy's
huge-page flag, OpenBLAS's own thread-timeout getter and thread count, and glibc's count of
``mmap``-ed blocks after a 64 MB allocation (zero new ones once mallopt keeps large blocks on
the heap).
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

# Probe run as ``python -c PROBE ACTION``: prints one JSON object with what it observed.
PROBE = r"""
import ctypes, json, os, sys
import numpy as np

ACTION = sys.argv[1]
calls = []
_getitem = ctypes.CDLL.__getitem__
def _record(self, name):        # every C function looked up through ctypes after this point
    calls.append(name if isinstance(name, str) else repr(name))
    return _getitem(self, name)
ctypes.CDLL.__getitem__ = _record

libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = MallInfo2

def big_alloc_is_mmapped():
    before = libc.mallinfo2().hblks
    a = np.ones(64 << 20, np.uint8)
    grew = libc.mallinfo2().hblks > before
    del a
    return grew

def hugepage_flag():
    ma = (getattr(np, "_core", None) or np.core).multiarray
    old = ma._set_madvise_hugepage(True)
    ma._set_madvise_hugepage(old)
    return old

def blas():
    try:
        import threadpoolctl
        libs = threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers
    except Exception:
        return None
    for lib in libs:
        dll = lib.dynlib
        if lib.threading_layer == "pthreads" and hasattr(dll, "openblas_thread_timeout"):
            dll.openblas_thread_timeout.restype = ctypes.c_int
            return dll
    return None

dll = blas()
a = np.ones((256, 256), np.float32)
a @ a                                     # OpenBLAS's thread pool is up
threads = lambda: len(os.listdir("/proc/self/task"))
env0 = dict(os.environ)
state0 = {"timeout": dll.openblas_thread_timeout() if dll else None, "threads": threads()}
calls.clear()
res = {"hugepage0": hugepage_flag()}
if ACTION == "import":
    import minicaffe
    minicaffe.Net                         # the lazy import of the net, the layers and Numba
    import minicaffe.extract, minicaffe.net
    res["tuning"] = None
elif ACTION in ("tune", "auto"):
    import minicaffe.runtime as rt
    t = rt.tune() if ACTION == "tune" else rt.auto_tune()
    res["tuning"] = t and t.__dict__
    res["again_same"] = rt.tune() is t if t else rt.tuning() is None
elif ACTION in ("forward", "forward-off"):
    import minicaffe, minicaffe.runtime as rt
    net = minicaffe.Net('input: "x" input_shape { dim: 2 dim: 3 } '
                        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                        'inner_product_param { num_output: 2 } }', backend="numpy")
    res["before_forward"] = rt.tuning() is not None
    if ACTION == "forward-off":
        net.tune_runtime = False
    net.forward(np.ones((2, 3), np.float32))
    res["tuning"] = rt.tuning() and rt.tuning().__dict__
res["env_added"] = {k: v for k, v in os.environ.items() if env0.get(k) != v}
res["env_removed"] = sorted(set(env0) - set(os.environ))
res["hugepage"] = hugepage_flag()
res["timeout0"], res["timeout"] = state0["timeout"], dll.openblas_thread_timeout() if dll else None
res["threads0"], res["threads"] = state0["threads"], threads()
res["mmapped"] = big_alloc_is_mmapped()
res["calls"] = [c for c in calls if c in ("mallopt", "openblas_read_env", "blas_thread_shutdown_")]
print(json.dumps(res))
"""

#: variables the probe's parent may have set that change what tune does
_TUNING_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT", "NUMPY_MADVISE_HUGEPAGE",
                "MINICAFFE_OPENBLAS_RESTART",
                "MINICAFFE_MALLOC_TUNING", "MINICAFFE_RUNTIME_TUNING", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                "GOTO_NUM_THREADS")


def probe(action, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in _TUNING_VARS and not k.startswith("MALLOC_")}
    env.update(env_extra)
    # cwd: this checkout's minicaffe first on the path (other tests chdir elsewhere)
    out = subprocess.run([sys.executable, "-c", PROBE, action], capture_output=True, text=True, env=env, timeout=180,
                         check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["timeout0"] is None:
        pytest.skip("no pthreads OpenBLAS with openblas_thread_timeout() to read back")
    return res


def test_import_minicaffe_changes_nothing_in_the_process():
    r = probe("import")
    assert r["env_added"] == {} and r["env_removed"] == [], r
    assert r["calls"] == [], f"ctypes calls during import: {r['calls']}"
    assert r["hugepage"] == r["hugepage0"], r
    assert r["timeout"] == r["timeout0"] == 0, r
    assert r["threads"] == r["threads0"] or r["threads"] > r["threads0"], r   # Numba may add threads, none stopped
    assert r["mmapped"], "a 64 MB array should still be mmap-ed by glibc's default"


def test_tune_applies_every_part_once():
    r = probe("tune")
    t = r["tuning"]
    assert r["env_added"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000",
                              "OPENBLAS_THREAD_TIMEOUT": "20", "NUMPY_MADVISE_HUGEPAGE": "0"}, r
    assert t["env"] == r["env_added"] and t["skipped"] == {}, t
    assert t["openblas_restarted"] and r["timeout"] == 20, r          # OpenBLAS re-read its environment ...
    assert r["threads"] < r["threads0"] or r["threads0"] == 1, r     # ... and its pool was stopped
    assert t["hugepages_off"] and r["hugepage"] is False, r
    assert t["malloc_tuned"] and not r["mmapped"], r
    assert r["calls"] == ["openblas_read_env", "blas_thread_shutdown_", "mallopt"], r["calls"]
    assert r["again_same"]


def test_user_settings_win():
    r = probe("tune", OMP_WAIT_POLICY="ACTIVE", OPENBLAS_THREAD_TIMEOUT="28", NUMPY_MADVISE_HUGEPAGE="1",
              MALLOC_ARENA_MAX="2")
    t = r["tuning"]
    assert r["env_added"] == {} and t["env"] == {}, r
    assert set(t["skipped"]) == {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT", "openblas",
                                 "hugepages", "malloc"}, t
    assert r["timeout"] == 28 and r["hugepage"] is True and r["mmapped"] and r["calls"] == [], r


@pytest.mark.parametrize("var", ["MINICAFFE_OPENBLAS_RESTART", "MINICAFFE_MALLOC_TUNING", "MINICAFFE_RUNTIME_TUNING"])
def test_opt_outs(var):
    r = probe("auto", **{var: "0"})
    t = r["tuning"]
    if var == "MINICAFFE_RUNTIME_TUNING":
        assert t is None and r["env_added"] == {} and r["calls"] == [] and r["mmapped"], r
        assert r["again_same"]
    elif var == "MINICAFFE_OPENBLAS_RESTART":
        assert not t["openblas_restarted"] and r["timeout"] == 0 and t["malloc_tuned"], r
        assert "openblas_read_env" not in r["calls"], r["calls"]
    else:
        assert t["openblas_restarted"] and not t["malloc_tuned"] and r["mmapped"], r
        assert "mallopt" not in r["calls"], r["calls"]


@pytest.mark.parametrize("action", ["forward", "forward-off"])
def test_net_tunes_on_first_forward_unless_told_not_to(action):
    r = probe(action)
    assert r["before_forward"] is False, "constructing a Net must not tune"
    if action == "forward":
        assert r["tuning"]["malloc_tuned"] and r["env_added"]["OMP_WAIT_POLICY"] == "PASSIVE", r
    else:
        assert r["tuning"] is None and r["env_added"] == {} and r["calls"] == [], r


def test_first_compile_is_announced_once():
    """Numba's compile event fires on a cache miss only: the notice comes with the first compilation, once."""
    numba = pytest.importorskip("numba")
    from numba.core import event

    from minicaffe.runtime import COMPILE_NOTICE, notice_first_compile
    said = []
    listener = notice_first_compile(said.append)
    try:
        assert said == []
        f = numba.njit(lambda x: x + 1)        # a fresh function: nothing cached
        g = numba.njit(lambda x: x * 2)
        assert f(1) == 2 and said == [COMPILE_NOTICE]
        assert g(2) == 4 and f(2.5) == 3.5 and said == [COMPILE_NOTICE]
    finally:
        event.unregister("numba:compile", listener)
