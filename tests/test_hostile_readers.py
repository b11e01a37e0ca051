"""Hostile files against every reader: each class of attack is built here (tmp_path, no network,
no torch) and must be refused with the reader's one-line error naming the file and the problem.
Memory-bound cases run in a child python under ``RLIMIT_AS`` (1 GiB of address space), so a
reader that allocated from a declared size would die with MemoryError instead of refusing; the
child also reports its peak RSS. ``python tests/test_hostile_readers.py`` prints those peaks
(the table in docs/reliability-readers.md)."""
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# after the sys.path insert: run as a script, this file must import the checkout's minicaffe
import minicaffe  # noqa: E402
from minicaffe.errors import (  # noqa: E402
    ModelError,
    NonFiniteWeightsWarning,
    PrototxtError,
    WeightsError,
)
from minicaffe.io import caffemodel, h5weights, prototxt, torch_pickle  # noqa: E402
from minicaffe.io.torch_pickle import (  # noqa: E402
    LEGACY_MAGIC,
    load_state_dict,
    load_torch_checkpoint,
)

#: address-space limit of the children running memory-bound cases
CHILD_AS_LIMIT = 1 << 30

# ------------------------------------------------------------------ pickle opcodes, by hand


def _int(n):
    """LONG1: any int (negative or > 32 bits) in minimal two's complement."""
    if n == 0:
        return b"\x8a\x00"
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _tensor(key, numel, size, stride, offset=0, stype="FloatStorage"):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, None) as pickle opcodes."""
    pid = _tuple([_str("storage"), f"ctorch\n{stype}\n".encode(), _str(key), _str("cpu"), _int(numel)])
    args = _tuple([pid + b"Q", _int(offset), _tuple([_int(s) for s in size]),
                   _tuple([_int(s) for s in stride]), b"\x89", b"N"])
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def _state_pickle(tensors):
    """{name: tensor opcodes} -> a protocol-2 pickle of a plain dict."""
    body = b"".join(_str(k) + v + b"s" for k, v in tensors.items())
    return b"\x80\x02}" + body + b"."


def _write_zip(path, pkl, storages=None, compress=None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for k, raw in (storages or {}).items():
            z.writestr(f"archive/data/{k}", raw, compress_type=compress or zipfile.ZIP_STORED)


def _write_legacy(path, pkl, storages=()):
    """Legacy layout: magic, protocol, sys-info pickles, the object pickle, the key list, raw storages."""
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(pkl)
        pickle.dump([k for k, _ in storages], f, protocol=2)
        f.writelines(struct.pack("<q", arr.size) + arr.astype("<f4").tobytes() for _, arr in storages)


def _good_zip(path):
    w = np.arange(6, dtype=np.float32)
    _write_zip(path, _state_pickle({"w": _tensor("0", 6, (2, 3), (3, 1))}), {"0": w.tobytes()})
    return w.reshape(2, 3)


def _refused(fn, *patterns):
    """Call fn, expect the reader's own error whose single line names every pattern."""
    with pytest.raises((WeightsError, PrototxtError, ModelError)) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for p in patterns:
        assert str(p) in msg, f"{p!r} not in {msg!r}"
    assert "MemoryError" not in msg and "RecursionError" not in msg, msg
    return msg


# ------------------------------------------------------------------ children under RLIMIT_AS


def run_bounded(code, timeout=60):
    """Run ``code`` in a child python limited to CHILD_AS_LIMIT bytes of address space.

    The code sets ``msg`` (the refusal's text). Returns (msg, peak RSS in MiB).
    """
    prog = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {ROOT!r})
        import numpy as np
        from minicaffe.errors import MinicaffeError
        resource.setrlimit(resource.RLIMIT_AS, ({CHILD_AS_LIMIT}, {CHILD_AS_LIMIT}))
        msg = None
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except MinicaffeError as e:
            msg = str(e)
        # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's over exec)
        peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
        print(json.dumps({"msg": msg, "peak_mib": peak}))
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=timeout, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["msg"], out["peak_mib"]


def _bounded_refusal(code, *patterns):
    msg, peak = run_bounded(code)
    assert msg is not None, "the hostile file was accepted"
    for p in patterns:
        assert str(p) in msg, f"{p!r} not in {msg!r}"
    assert "MemoryError" not in msg, msg
    assert peak < 1024, f"peak RSS {peak:.0f} MiB"
    return msg, peak


# ================================================================== PyTorch checkpoints

def build_billion_laughs(path, legacy):
    a = [0.0]
    for _ in range(30):
        a = [a] * 10  # 10**30 leaves once expanded, ~1 KB pickled (the memo shares each level)
    pkl = pickle.dumps({"w": a}, protocol=2)
    (_write_legacy if legacy else _write_zip)(path, pkl)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_billion_laughs(tmp_path, legacy):
    p = tmp_path / "laughs.pth"
    build_billion_laughs(p, legacy)
    assert p.stat().st_size < 4096
    _bounded_refusal(f"from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({str(p)!r})",
                     p, "shared references")


def test_pickle_memo_reads_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_pickle, "MAX_MEMO_GETS", 1000)
    p = tmp_path / "gets.pth"
    x = [0.0]
    _write_zip(p, pickle.dumps({"w": [x] * 2000}, protocol=2))
    _refused(lambda: load_torch_checkpoint(p), p, "reuses shared objects more than 1,000 times")


def test_pickle_opcode_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_pickle, "MAX_PICKLE_OPS", 5000)
    p = tmp_path / "ops.pth"
    _write_zip(p, pickle.dumps({"w": list(range(10000))}, protocol=2))
    _refused(lambda: load_torch_checkpoint(p), p, "more than 5,000 operations")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_deep_nesting(tmp_path, legacy):
    # 100000 nested lists: no RecursionError anywhere, a clear refusal instead
    n = 100_000
    pkl = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    p = tmp_path / "deep.pth"
    (_write_legacy if legacy else _write_zip)(p, pkl)
    _refused(lambda: load_torch_checkpoint(p), p, "nesting deeper than 64")


def test_pickle_reference_cycle(tmp_path):
    a = []
    a.append(a)
    p = tmp_path / "cycle.pth"
    _write_legacy(p, pickle.dumps({"w": a}, protocol=2))
    _refused(lambda: load_torch_checkpoint(p), p, "reference cycle")


@pytest.mark.parametrize("target", ["ctorch\nFloatStorage\n", "ctorch._utils\n_rebuild_tensor_v2\n",
                                    "ccollections\nOrderedDict\n", "ctorch._utils\n_rebuild_parameter\n"])
def test_pickle_build_on_allowed_global_refused_and_no_poisoning(tmp_path, target):
    # BUILD {'dtype': ...} applied to an allow-listed object: must be refused, and must not
    # change what later loads in this process return
    evil = (b"\x80\x02" + target.encode() + b"}" + _str("dtype") + _str("int8") + b"s" +
            _str("__call__") + b"Ns" + b"b" + b".")
    p = tmp_path / "build.pth"
    _write_zip(p, evil)
    _refused(lambda: load_torch_checkpoint(p), p, "refuses pickle BUILD")
    good = tmp_path / "good.pth"
    want = _good_zip(good)
    got = load_state_dict(good)["w"]
    assert got.dtype == np.float32 and np.array_equal(got, want), got


def test_pickle_build_on_state_dict_metadata_allowed(tmp_path):
    # the one legitimate BUILD: a state_dict OrderedDict carrying `_metadata`
    d = OrderedDict(w=1.5)
    d._metadata = OrderedDict({"": {"version": 1}})
    p = tmp_path / "meta.pth"
    _write_zip(p, pickle.dumps(d, protocol=2))
    assert load_torch_checkpoint(p) == {"w": 1.5}


def test_pickle_bytearray_refused(tmp_path):
    pkl = b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"."  # BYTEARRAY8 of 1 TB
    p = tmp_path / "ba.pth"
    _write_legacy(p, pkl)
    _refused(lambda: load_torch_checkpoint(p), p, "bytearrays")


def test_tensor_zero_stride(tmp_path):
    # one stored float viewed as 2**29 elements by a zero stride (2 GB if materialised)
    p = tmp_path / "zs.pth"
    _write_zip(p, _state_pickle({"w": _tensor("0", 1, (1 << 29,), (0,))}), {"0": b"\0\0\0\0"})
    assert p.stat().st_size < 1024
    _bounded_refusal(f"from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({str(p)!r})",
                     p, "zero stride")


def test_tensor_negative_stride_and_offset(tmp_path):
    raw = np.zeros(8, np.float32).tobytes()
    for size, stride, off, what in [((4,), (-1,), 0, "invalid tensor geometry"),
                                    ((4,), (1,), -2, "invalid tensor geometry"),
                                    ((4,), (2,), 2, "past its storage"),
                                    ((4, 4), (2, 1), 0, "past its storage")]:
        p = tmp_path / "neg.pth"
        _write_zip(p, _state_pickle({"w": _tensor("0", 8, size, stride, off)}), {"0": raw})
        _refused(lambda p=p: load_torch_checkpoint(p), p, what)


def test_tensor_too_many_dims(tmp_path):
    p = tmp_path / "dims.pth"
    _write_zip(p, _state_pickle({"w": _tensor("0", 1, (1,) * 40, (1,) * 40)}), {"0": b"\0\0\0\0"})
    _refused(lambda: load_torch_checkpoint(p), p, "40 dims")


def test_overlapping_views_budget(tmp_path):
    # 64 tensors each viewing the same 1 MiB storage: 64 MiB materialised from 1 MiB, refused
    n = 1 << 18
    p = tmp_path / "views.pth"
    _write_zip(p, _state_pickle({f"w{i}": _tensor("0", n, (n,), (1,)) for i in range(64)}),
               {"0": bytes(4 * n)})
    _refused(lambda: load_torch_checkpoint(p), p, "overlapping views")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_storage_declared_size_budget(tmp_path, legacy):
    # a 2**40-element storage declared in a tiny file: refused from the declaration
    p = tmp_path / "huge.pth"
    pkl = _state_pickle({"w": _tensor("0", 1 << 40, (1 << 40,), (1,))})
    if legacy:
        _write_legacy(p, pkl)
    else:
        _write_zip(p, pkl, {"0": b"\0" * 16})
    _bounded_refusal(f"from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({str(p)!r})",
                     p, "storages declare")


def test_legacy_storage_longer_than_file(tmp_path):
    # the pickle and the storage header agree on 2**28 elements; the file holds 16 bytes
    p = tmp_path / "short.pth"
    with open(p, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(_state_pickle({"w": _tensor("0", 1 << 28, (1 << 28,), (1,))}))
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 1 << 28) + b"\0" * 16)
    _bounded_refusal(f"from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({str(p)!r})",
                     p, "truncated")


def build_deflate_bomb(path, gib=3):
    """A zip whose one storage inflates to `gib` GiB of zeros from ~3 MB (raw deflate blocks)."""
    chunk = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    block2 = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == block2  # a full flush resets the window: every MiB compresses identically
    n = gib << 10
    comp = block * n + c.flush()
    usize = n * chunk
    numel = usize // 4
    pkl = _state_pickle({"w": _tensor("0", numel, (numel,), (1,))})
    # write data.pkl normally, then append the bomb member by hand (zipfile cannot write
    # pre-compressed bytes)
    buf = io.BytesIO()
    members = []
    for name, data, method, crc, size in [("archive/data.pkl", pkl, 0, zlib.crc32(pkl), len(pkl)),
                                          ("archive/data/0", comp, 8, 0, usize)]:
        off = buf.tell()
        nb = name.encode()
        buf.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                              len(nb), 0) + nb + data)
        members.append((nb, method, crc, len(data), size, off))
    cd = buf.tell()
    for nb, method, crc, csize, size, off in members:
        buf.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, csize, size,
                              len(nb), 0, 0, 0, 0, 0, off) + nb)
    end = buf.tell()
    buf.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), end - cd, cd, 0))
    path.write_bytes(buf.getvalue())


def test_zip_deflate_bomb(tmp_path):
    p = tmp_path / "bomb.pth"
    build_deflate_bomb(p)
    assert p.stat().st_size < 4 << 20
    with zipfile.ZipFile(p) as z:  # the archive is well-formed; only its sizes are hostile
        assert z.getinfo("archive/data/0").file_size == 3 << 30
    _bounded_refusal(f"from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({str(p)!r})",
                     p, "zip bomb")


def test_zip_data_pkl_declared_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_pickle, "MAX_PICKLE_BYTES", 1000)
    p = tmp_path / "bigpkl.pth"
    _write_zip(p, pickle.dumps({"w": "x" * 5000}, protocol=2))
    _refused(lambda: load_torch_checkpoint(p), p, "data.pkl declares")


def test_good_checkpoint_unchanged(tmp_path):
    # control: the hand-built writers make files the reader accepts (so the refusals above
    # come from the hostile part, not from the builders)
    p = tmp_path / "good.pth"
    want = _good_zip(p)
    assert np.array_equal(load_state_dict(p)["w"], want)
    q = tmp_path / "good_legacy.pth"
    w = np.arange(5, dtype=np.float32)
    _write_legacy(q, _state_pickle({"w": _tensor("0", 5, (5,), (1,))}), [("0", w)])
    assert np.array_equal(load_state_dict(q)["w"], w)


# ================================================================== caffemodel


def _v(n):
    return caffemodel._varint(n)


def _blob_bytes(dims, data=b"", packed=True):
    shape = caffemodel._field(1, b"".join(_v(d) for d in dims))
    bp = caffemodel._field(7, shape)
    if data:
        bp += caffemodel._field(5, data) if packed else data
    return bp


def _model_bytes(blob):
    lp = caffemodel._field(1, b"l") + caffemodel._field(2, b"InnerProduct") + caffemodel._field(7, blob)
    return caffemodel._field(1, b"n") + caffemodel._field(100, lp)


@pytest.mark.parametrize("dims,what", [
    ([1] * 40, "more than 32 dims"),
    ([0, 1 << 40], "larger than 2147483647"),
    ([1 << 40, 0], "larger than 2147483647"),
    ([(1 << 64) - 1], "larger than 2147483647"),      # int64 -1 on the wire
    ([50_000, 50_000], "more than Caffe's limit"),
    ([3, 4], "needs 12 values but the file holds 2"),
])
def test_caffemodel_bad_shapes(tmp_path, dims, what):
    p = tmp_path / "m.caffemodel"
    p.write_bytes(_model_bytes(_blob_bytes(dims, np.zeros(2, "<f4").tobytes())))
    _refused(lambda: caffemodel.read_caffemodel(p), p, what)


def test_caffemodel_zero_dim_consistent(tmp_path):
    # a zero dim next to ordinary ones is an empty blob (as in Caffe), never an error or a crash
    p = tmp_path / "z.caffemodel"
    p.write_bytes(_model_bytes(_blob_bytes([0, 1000])))
    _, layers = caffemodel.read_caffemodel(p)
    assert layers["l"][1][0].shape == (0, 1000)


def test_caffemodel_declared_count_not_allocated(tmp_path):
    # declares 2**31-1 floats (8 GB), holds one: refused before allocating, in a 1 GiB child
    p = tmp_path / "big.caffemodel"
    p.write_bytes(_model_bytes(_blob_bytes([(1 << 31) - 1], b"\0\0\0\0")))
    _bounded_refusal(f"from minicaffe.io.caffemodel import read_caffemodel\nread_caffemodel({str(p)!r})",
                     p, "needs 2147483647 values but the file holds 1")


def build_unpacked_floats(path, n):
    """n floats each as its own fixed32 field (tag 0x2d): 5 bytes per value on disk."""
    rec = np.zeros(n, dtype=[("tag", "u1"), ("v", "<f4")])
    rec["tag"] = (5 << 3) | 5
    rec["v"] = np.arange(n, dtype=np.float32)
    path.write_bytes(_model_bytes(_blob_bytes([n]) + rec.tobytes()))


def test_caffemodel_unpacked_floats_memory(tmp_path):
    n = 150_000
    p = tmp_path / "unpacked.caffemodel"
    build_unpacked_floats(p, n)
    tracemalloc.start()
    try:
        _, layers = caffemodel.read_caffemodel(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    a = layers["l"][1][0]
    assert a.shape == (n,) and a[-1] == n - 1
    size = p.stat().st_size
    assert peak < 4 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


# ================================================================== prototxt


def test_prototxt_deep_nesting():
    text = "a { " * 5000 + "}" * 5000
    msg = _refused(lambda: prototxt.parse(text, "deep.prototxt"), "deep.prototxt:1:", "nested deeper than 100")
    assert ":1:403:" in msg, msg  # the 101st '{' is at column 403


def test_prototxt_deep_list_nesting():
    text = "a: [" + "{ b: [" * 3000
    _refused(lambda: prototxt.parse(text, "deep.prototxt"), "nested deeper than 100")


def test_prototxt_huge_string_memory():
    text = 'name: "' + "x" * (10 << 20) + '"\n'
    tracemalloc.start()
    try:
        _refused(lambda: prototxt.parse(text, "s.prototxt"), "s.prototxt:1:7", "quoted string of 10,485,760")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(text), f"peak {peak / 1e6:.1f} MB"


def test_prototxt_concatenated_strings_cap(monkeypatch):
    monkeypatch.setattr(prototxt, "MAX_STRING_CHARS", 100)
    text = "name: " + '"' + "x" * 60 + '" ' + '"' + "y" * 60 + '"'
    _refused(lambda: prototxt.parse(text, "c.prototxt"), "concatenated string longer than 100")


def test_prototxt_field_and_size_caps(monkeypatch, tmp_path):
    monkeypatch.setattr(prototxt, "MAX_FIELDS", 100)
    _refused(lambda: prototxt.parse("a: 1\n" * 200, "f.prototxt"), "f.prototxt:101:1", "more than 100 fields")
    monkeypatch.setattr(prototxt, "MAX_TEXT_BYTES", 1000)
    p = tmp_path / "big.prototxt"
    p.write_text("# x\n" * 1000)
    _refused(lambda: prototxt.parse_file(p), p, "too large")


NET = """name: "t"
input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 %s } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


@pytest.mark.parametrize("extra,where,what", [
    ("strid: 2", ":4:52", "unknown field 'strid' in convolution_param of layer 'conv'"),
    ("weight_filler { typ: \"msra\" }", ":4:68", "unknown field 'typ' in weight_filler"),
    ("stride { x: 1 }", ":4:52", "field 'stride' in convolution_param of layer 'conv' takes a value, not a message"),
    ("weight_filler: 3", ":4:52", "field 'weight_filler' in convolution_param of layer 'conv' must be a message"),
])
def test_prototxt_unknown_field_in_param(extra, where, what):
    _refused(lambda: minicaffe.Net(NET % extra), "<prototxt>" + where, what)


def test_prototxt_unknown_layer_and_net_fields(tmp_path):
    p = tmp_path / "u.prototxt"
    p.write_text(NET.replace('name: "conv"', 'name: "conv" botom: "x"') % "")
    _refused(lambda: minicaffe.Net(p), f"{p}:3:22", "unknown field 'botom' in layer")
    p.write_text("nme: 1\n" + NET % "")
    _refused(lambda: minicaffe.Net(p), f"{p}:1:1", "unknown field 'nme' in the net")
    p.write_text(NET.replace('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8',
                             'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dims: 3 } } }')
                 % "")
    _refused(lambda: minicaffe.Net(p), "unknown field 'dims' in shape")


def test_prototxt_known_fields_still_accepted():
    # every field of the checked messages that a real prototxt uses is still accepted
    net = minicaffe.Net(NET % "stride: 1 pad: 0 dilation: 1 group: 1 bias_term: true engine: CAFFE "
                              "weight_filler { type: \"msra\" } bias_filler { type: \"constant\" value: 0 }")
    assert net.blob_shapes["conv"] == (1, 4, 6, 6)


@pytest.mark.parametrize("extra,what", [("dilation: 1.5", "dilation must be an integer, got 1.5"),
                                        ("pad_top: 0.5", "pad_top must be an integer"),
                                        ("dilation: 1 dilation: 1 dilation: 1", "dilation given 3 times")])
def test_layer_parameter_types(extra, what):
    _refused(lambda: minicaffe.Net(NET % extra, backend="numpy"), "layer 'conv'", what)


def test_duplicate_non_inplace_top():
    text = NET % "" + 'layer { name: "c2" type: "Convolution" bottom: "data" top: "conv" ' \
                      'convolution_param { num_output: 4 kernel_size: 3 } }\n'
    _refused(lambda: minicaffe.Net(text), "blob 'conv' is produced by both layer 'conv' and layer 'c2'")
    _refused(lambda: minicaffe.Net(NET % "" + 'layer { name: "r2" type: "ReLU" bottom: "data" top: "conv" }'),
             "blob 'conv' is produced by both")
    minicaffe.Net(NET % "")  # the in-place ReLU writing `conv` is fine


def test_huge_input_shape_refused():
    text = NET.replace("input_dim: 8 input_dim: 8", "input_dim: 100000 input_dim: 100000") % ""
    minicaffe.Net(NET % "")  # imports and first-use caches, untraced
    tracemalloc.start()
    try:
        _refused(lambda: minicaffe.Net(text), "blob 'data'", "more than 2,147,483,647")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 1e6:.1f} MB"


def test_random_init_float32_memory():
    # 8M parameters: the float32 weights plus one 8 MB draw chunk, never a float64 copy of all
    text = ('input: "data" input_shape { dim: 1 dim: 4000 }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 2000 bias_term: false } }')
    minicaffe.Net(text.replace("4000", "4"), backend="numpy")  # imports and first-use caches, untraced
    tracemalloc.start()
    try:
        net = minicaffe.Net(text, backend="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    w = net.params["fc"][0]
    assert w.dtype == np.float32 and w.shape == (2000, 4000)
    assert peak < w.nbytes + (12 << 20), f"peak {peak / 1e6:.1f} MB for {w.nbytes / 1e6:.1f} MB of weights"
    ref = (np.random.default_rng(0).standard_normal((2000, 4000)) * np.sqrt(2.0 / 4000)).astype(np.float32)
    assert np.array_equal(w, ref)  # the same values as the single float64 draw


# ================================================================== HDF5 weights

h5py = pytest.importorskip("h5py")

H5NET = """input: "data" input_shape { dim: 1 dim: 4 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
"""


def _good_h5(path):
    rng = np.random.default_rng(0)
    params = {"fc": [rng.standard_normal((3, 4)).astype(np.float32), np.zeros(3, np.float32)]}
    h5weights.save_h5(path, params)
    return params


def test_h5_good_file_control(tmp_path):
    p = tmp_path / "w.h5"
    params = _good_h5(p)
    net = minicaffe.Net(H5NET, str(p))
    assert np.array_equal(net.params["fc"][0], params["fc"][0])


@pytest.mark.parametrize("where,key,value,what", [
    ("file", "format", np.arange(3), "attribute 'format' must be a scalar"),
    ("file", "format", 7, "attribute 'format' must be text"),
    ("group", "order", "first", "attribute 'order' must be an integer"),
    ("group", "order", 1.5, "attribute 'order' must be an integer"),
    ("group", "name", np.zeros((2, 2)), "attribute 'name' must be a scalar"),
    ("group", "name", b"\xff\xfe", "attribute 'name' is not UTF-8"),
])
def test_h5_odd_attributes(tmp_path, where, key, value, what):
    p = tmp_path / "w.h5"
    _good_h5(p)
    with h5py.File(p, "a") as f:
        (f if where == "file" else f["fc"]).attrs[key] = np.bytes_(value) if isinstance(value, bytes) else value
    _refused(lambda: h5weights.load_h5(p), p, what)


def test_h5_group_where_dataset_belongs(tmp_path):
    p = tmp_path / "w.h5"
    _good_h5(p)
    with h5py.File(p, "a") as f:
        del f["fc/1"]
        f["fc"].create_group("1")
    _refused(lambda: minicaffe.Net(H5NET, str(p)), p, "layer 'fc' blob 1 is a Group, expected a dataset")


@pytest.mark.parametrize("kind", ["soft_loop", "hard_loop", "external"])
def test_h5_links(tmp_path, kind):
    p = tmp_path / "w.h5"
    _good_h5(p)
    with h5py.File(p, "a") as f:
        del f["fc/1"]
        if kind == "soft_loop":
            f["fc/1"] = h5py.SoftLink("/fc/1")
        elif kind == "hard_loop":
            f["fc/1"] = f["fc"]  # the group contains itself
        else:
            f["fc/1"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
    what = {"soft_loop": "is a SoftLink", "hard_loop": "is a Group", "external": "is a ExternalLink"}[kind]
    _refused(lambda: h5weights.load_h5(p), p, what)


def build_h5_gzip_bomb(path):
    """A chunked gzip dataset declaring 2**30 floats (4 GiB) of which nothing is stored."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = h5weights.FORMAT
        g = f.create_group("fc")
        g.create_dataset("0", shape=(1 << 30,), dtype="f4", chunks=(1 << 18,), compression="gzip")
        g.create_dataset("1", data=np.zeros(3, np.float32))


def test_h5_gzip_bomb(tmp_path):
    p = tmp_path / "bomb.h5"
    build_h5_gzip_bomb(p)
    assert p.stat().st_size < 64 << 10
    _bounded_refusal(f"from minicaffe.io.h5weights import load_h5\nload_h5({str(p)!r})",
                     p, "compression bomb")
    # with the net's expected shapes it is refused even earlier, from the declared shape
    _refused(lambda: minicaffe.Net(H5NET, str(p)), p, "has shape (1073741824,), expected (3, 4)")


def test_h5_non_float_dtype(tmp_path):
    p = tmp_path / "w.h5"
    _good_h5(p)
    with h5py.File(p, "a") as f:
        del f["fc/0"]
        f["fc"].create_dataset("0", data=np.zeros((3, 4), np.int32))
    _refused(lambda: minicaffe.Net(H5NET, str(p)), p, "holds int32 data")
    with h5py.File(p, "a") as f:
        del f["fc/0"]
        f["fc"].create_dataset("0", data=np.array(["a", "b"], dtype=h5py.string_dtype()))
    _refused(lambda: minicaffe.Net(H5NET, str(p)), p, "weights must be floating point")


# ================================================================== non-finite weights


def test_non_finite_weights_warn_and_strict(tmp_path):
    p = tmp_path / "w.h5"
    params = _good_h5(p)
    params["fc"][0][1, 2] = np.nan
    params["fc"][1][0] = np.inf
    h5weights.save_h5(p, params)
    with pytest.warns(NonFiniteWeightsWarning) as rec:
        minicaffe.Net(H5NET, str(p))
    msg = str(rec[0].message)
    assert str(p) in msg and "layer 'fc' blob 0 has 1 non-finite value" in msg and "blob 1" in msg, msg
    _refused(lambda: minicaffe.Net(H5NET, str(p), strict=True), p, "layer 'fc' blob 0 has 1 non-finite value")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _good_h5(p)
        minicaffe.Net(H5NET, str(p), strict=True)  # finite weights: no warning, no error


# ================================================================== peak memory table

MEMORY_CASES = {
    "pickle billion laughs (zip)": (lambda d: build_billion_laughs(d / "a.pth", False),
                                    "from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({p!r})",
                                    "a.pth"),
    "pickle billion laughs (legacy)": (lambda d: build_billion_laughs(d / "b.pth", True),
                                       ("from minicaffe.io.torch_pickle import load_state_dict\n"
                                        "load_state_dict({p!r})"), "b.pth"),
    "zero-stride tensor (2 GB view)": (
        lambda d: _write_zip(d / "c.pth", _state_pickle({"w": _tensor("0", 1, (1 << 29,), (0,))}),
                             {"0": b"\0\0\0\0"}),
        "from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({p!r})", "c.pth"),
    "zip deflate bomb (3 GiB)": (lambda d: build_deflate_bomb(d / "d.pth"),
                                 "from minicaffe.io.torch_pickle import load_state_dict\nload_state_dict({p!r})",
                                 "d.pth"),
    "caffemodel 2**31-1 declared floats": (
        lambda d: (d / "e.caffemodel").write_bytes(_model_bytes(_blob_bytes([(1 << 31) - 1], b"\0\0\0\0"))),
        "from minicaffe.io.caffemodel import read_caffemodel\nread_caffemodel({p!r})", "e.caffemodel"),
    "caffemodel 25 MB of unpacked floats": (
        lambda d: build_unpacked_floats(d / "f.caffemodel", 5_000_000),
        ("from minicaffe.io.caffemodel import read_caffemodel\n"
         "n = read_caffemodel({p!r})[1]['l'][1][0].size\nmsg = f'read: {{n:,}} floats'"),
        "f.caffemodel"),
    "prototxt 10 MB quoted string": (
        lambda d: (d / "g.prototxt").write_text('name: "' + "x" * (10 << 20) + '"\n'),
        "from minicaffe.io.prototxt import parse_file\nparse_file({p!r})", "g.prototxt"),
    "prototxt nested 100000 deep": (
        lambda d: (d / "h.prototxt").write_text("a { " * 100000 + "}" * 100000),
        "from minicaffe.io.prototxt import parse_file\nparse_file({p!r})", "h.prototxt"),
    "HDF5 gzip bomb (4 GiB declared)": (lambda d: build_h5_gzip_bomb(d / "i.h5"),
                                        "from minicaffe.io.h5weights import load_h5\nload_h5({p!r})", "i.h5"),
}


def measure_all():
    """Print 'case | file bytes | peak RSS MiB | outcome' for every memory-bound case."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        d = __import__("pathlib").Path(d)
        for name, (build, code, fname) in MEMORY_CASES.items():
            build(d)
            p = str(d / fname)
            msg, peak = run_bounded(code.format(p=p), timeout=300)
            msg = (msg or "accepted").removeprefix(p).lstrip(":0123456789 ")
            print(f"| {name} | {os.path.getsize(p):,} | {peak:.0f} | {msg[:90]} |")


if __name__ == "__main__":
    measure_all()


def test_cli_strict_and_one_line_warning(tmp_path):
    """extract on weights holding NaN: one ``minicaffe: warning:`` line naming the layer (no source
    line, no traceback) and the features still written; --strict refuses with one error line."""
    import subprocess
    import sys

    from PIL import Image
    proto = tmp_path / "n.prototxt"
    proto.write_text('name: "n"\ninput: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                     'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                     'inner_product_param { num_output: 3 } }\n')
    from minicaffe import Net
    net = Net(str(proto), None, seed=0)
    net.params["fc"][0][1, 2] = np.nan
    w = tmp_path / "w.h5"
    net.save_h5(str(w))
    img = tmp_path / "img"
    img.mkdir()
    Image.fromarray(np.full((10, 10, 3), 99, np.uint8)).save(img / "a.png")
    base = [sys.executable, "-m", "minicaffe.extract", str(img), "--prototxt", str(proto), "--weights", str(w),
            "--layers", "fc", "--workers", "0"]
    r = subprocess.run([*base, "-o", str(tmp_path / "f.h5")], capture_output=True, text=True, timeout=300, check=False)
    lines = [ln for ln in r.stderr.splitlines() if "warning" in ln and "fc" in ln]
    assert lines and lines[0].startswith("minicaffe: warning:"), r.stderr
    assert "Traceback" not in r.stderr and "warnings.warn(" not in r.stderr, r.stderr
    r = subprocess.run([*base, "-o", str(tmp_path / "g.h5"), "--strict"], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 2 and r.stderr.startswith("minicaffe: error:") and "fc" in r.stderr, r.stderr
    assert not (tmp_path / "g.h5").exists()
