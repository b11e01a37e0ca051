"""Net behaviour: every blob exposed, Caffe in-place semantics, pre-activations, start/end,
hooks, writable params, batch sizes, and the backend switch."""
import numpy as np
import pytest
from conftest import assert_close

import minicaffe
from minicaffe import threads
from minicaffe.errors import BackendError


@pytest.fixture(scope="module")
def small(fixtures_dir):
    net = minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel")
    x = np.load(fixtures_dir / "caffenet_small_input_227.npy")
    return net, x


def test_every_blob_and_inplace(small):
    net, x = small
    out = net.forward(x, keep_pre_activation=True)
    names = ["data", "conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5",
             "fc6", "fc7", "fc8", "prob"]
    assert all(n in out for n in names) and list(net.blobs) == list(out)
    for b in ["conv1", "conv5", "fc6", "fc7"]:
        pre = out[b + ".pre"]
        assert (pre < 0).any(), b
        assert np.array_equal(out[b], np.maximum(pre, 0)), b
    plain = net.forward(x)
    assert "fc6.pre" not in plain
    assert np.array_equal(plain["fc7"], out["fc7"])
    assert x.dtype == np.float32 and not np.shares_memory(plain["data"], x)


def test_end_and_start(small):
    net, x = small
    full = net.forward(x)
    part = net.forward(x, end="fc6")
    assert "fc7" not in part and (part["fc6"] < 0).any()  # stopped before relu6, as Caffe's forward(end=)
    rest = net.forward(start="relu6")
    assert_close(rest["prob"], full["prob"], 0, "resumed forward")


def test_full_forward_frees_the_previous_pass_first(small):
    """The previous pass's blobs are released before a full pass runs (its memory is reused,
    instead of two passes' worth living at once); a partial pass keeps the blobs it reads."""
    import weakref
    net, x = small
    net.forward(x, fetch=[])
    old = {b: weakref.ref(net.blobs[b]) for b in ("conv1", "fc6", "prob")}
    alive = []
    h = net.add_hook(before=lambda n, i, l: alive.append([b for b, r in old.items() if r() is not None])
                     if l.name == "conv1" else None)
    out = net.forward(x, fetch=["prob"])
    net.remove_hook(h)
    assert alive == [[]], f"still alive when the next pass started: {alive}"
    kept = weakref.ref(net.blobs["pool5"])
    rest = net.forward(start="fc6", fetch=["prob"])
    assert kept() is not None and np.array_equal(rest["prob"], out["prob"])


def test_hooks_see_every_layer_in_order(small):
    net, x = small
    seen = []
    h = net.add_hook(before=lambda n, i, l: seen.append(("b", l.name)),
                     after=lambda n, i, l, tops: seen.append(("a", l.name, tops[0].shape)))
    net.forward(x)
    net.remove_hook(h)
    layers = [l.name for l in net.layers if l.type != "Input"]
    assert [s[1] for s in seen[::2]] == layers and [s[0] for s in seen] == ["b", "a"] * len(layers)
    assert seen[-1] == ("a", "prob", (2, 10))
    net.forward(x)
    assert len(seen) == 2 * len(layers)


def test_params_writable_and_batch_sizes(fixtures_dir):
    net = minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel")
    x = np.load(fixtures_dir / "caffenet_small_input_227.npy")
    assert [p.shape for p in net.params["conv2"]] == [(32, 8, 5, 5), (32,)]
    one = net.forward(x[:1])["fc7"]
    three = net.forward(np.concatenate([x, x[:1]]))["fc7"]
    assert_close(three[0], one[0], 1e-6, "batch 3 vs batch 1")
    assert_close(three[2], one[0], 1e-6, "batch 3 vs batch 1")
    net.params["fc8"][1][...] = 0
    net.params["fc8"][0][...] = 0
    assert np.allclose(net.forward(x)["prob"], 0.1)


def test_backends_agree_and_cuda_is_explicit(fixtures_dir):
    x = np.load(fixtures_dir / "googlenet" / "googlenet_input_224.npy")[:1]
    p = fixtures_dir / "googlenet" / "googlenet.prototxt"
    w = fixtures_dir / "googlenet" / "googlenet.caffemodel"
    a = minicaffe.Net(p, w, backend="numpy").forward(x)
    b = minicaffe.Net(p, w, backend="cpu").forward(x)
    for k in a:
        assert_close(b[k], a[k], 1e-5, f"googlenet cpu vs numpy {k}")
    from numba import cuda
    if not cuda.is_available():
        with pytest.raises(BackendError, match="no usable CUDA GPU"):
            minicaffe.Net(p, w, backend="cuda")
    with pytest.raises(BackendError, match="unknown backend"):
        minicaffe.Net(p, w, backend="tpu")
_FUSE_NET = """
name: "fuse"
input: "data" input_shape { dim: 1 dim: 3 dim: 23 dim: 23 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 5 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "relu2b" type: "ReLU6" bottom: "conv2" top: "conv2" }
layer { name: "leaky" type: "Convolution" bottom: "conv2" top: "leaky"
        convolution_param { num_output: 16 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "leaky" top: "leaky" relu_param { negative_slope: 0.1 } }
layer { name: "c6" type: "Convolution" bottom: "leaky" top: "c6" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "relu6" type: "ReLU6" bottom: "c6" top: "c6" }
layer { name: "fc" type: "InnerProduct" bottom: "c6" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "relu4" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out" inner_product_param { num_output: 4 } }
layer { name: "relu5" type: "ReLU" bottom: "out" top: "out2" }
"""


@pytest.mark.parametrize("batch", [1, 5])
def test_fused_relu_gives_the_same_blobs_and_runs_every_hook(batch):
    """Conv/fc + in-place ReLU fused on the cpu backend: every blob equals the unfused pass (and
    the numpy reference), every layer's hooks still run in order; a leaky ReLU and a ReLU writing
    a new top are not fused."""
    from minicaffe import Net
    x = np.random.default_rng(4).standard_normal((batch, 3, 23, 23)).astype(np.float32) * 20
    fused = Net(_FUSE_NET, None, backend="cpu", seed=1)
    plain = Net(_FUSE_NET, fused.params, backend="cpu")
    plain.fuse_relu = False
    ref = Net(_FUSE_NET, fused.params, backend="numpy")
    ran = []
    for layer in fused.layers:
        if layer.type in ("ReLU", "Clip"):
            layer.forward = (lambda f, n: lambda *a, **k: (ran.append(n), f(*a, **k))[1])(layer.forward, layer.name)
    seen = []
    fused.add_hook(before=lambda net, i, l: seen.append(("b", l.name)),
                   after=lambda net, i, l, t: seen.append(("a", l.name)))
    a, b, r = fused.forward(x), plain.forward(x), ref.forward(x)
    names = [l.name for l in fused.layers]
    assert seen == [(k, n) for n in names for k in ("b", "a")]
    assert ran == ["relu2b", "relu3", "relu5"], f"activation layers that did their own pass: {ran}"
    assert list(a) == list(b) == list(r)
    for k in a:
        scale = max(float(np.abs(r[k]).max()), 1e-30)
        assert np.abs(a[k] - b[k]).max() / scale <= 1e-5, f"{k}: fused vs unfused {np.abs(a[k] - b[k]).max():.3e}"
        assert np.abs(a[k] - r[k]).max() / scale <= 1e-5, f"{k}: fused vs numpy {np.abs(a[k] - r[k]).max():.3e}"
    assert (a["conv1"] >= 0).all() and (a["fc"] >= 0).all() and (a["leaky"] < 0).any()
    assert a["conv2"].max() == 6.0      # relu2 fused, then ReLU6 (not fusable after a fused layer) capped
    assert a["c6"].max() == 6.0 and a["c6"].min() == 0.0      # conv + ReLU6 fused


MBCONV = """input: "data" input_shape { dim: 2 dim: 3 dim: 17 dim: 15 }
layer { name: "stem" type: "Convolution" bottom: "data" top: "stem"
        convolution_param { num_output: 24 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "stem/relu6" type: "Clip" bottom: "stem" top: "stem" clip_param { min: 0 max: 6 } }
layer { name: "expand" type: "Convolution" bottom: "stem" top: "expand"
        convolution_param { num_output: 40 kernel_size: 1 } }
layer { name: "expand/relu" type: "ReLU" bottom: "expand" top: "expand" }
layer { name: "dw" type: "Convolution" bottom: "expand" top: "dw"
        convolution_param { num_output: 40 group: 40 kernel_size: 5 pad: 2 } }
layer { name: "dw/relu6" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "project" type: "Convolution" bottom: "dw" top: "project"
        convolution_param { num_output: 24 kernel_size: 1 } }
layer { name: "add" type: "Eltwise" bottom: "stem" bottom: "project" top: "add" }
layer { name: "side" type: "LRN" bottom: "expand" top: "side" lrn_param { local_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "add" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
"""


@pytest.mark.parametrize("keep_pre", [False, True])
def test_channels_last_blobs_hold_the_same_values(keep_pre):
    """A MobileNet-style block runs channels last: the stem writes that layout because every reader
    takes it, the 1x1 and depthwise layers keep their input's layout (``expand`` too, though an LRN
    also reads it: the LRN copies), the residual sum keeps its inputs'. Every blob equals the NumPy
    reference's and the NCHW-only net's; with ``keep_pre_activation`` every blob is NCHW."""
    from minicaffe.layers.base import is_channels_last
    x = np.random.default_rng(5).standard_normal((2, 3, 17, 15)).astype(np.float32)
    cpu = minicaffe.Net(MBCONV, None, seed=7)
    ref = minicaffe.Net(MBCONV, cpu.params, backend="numpy").forward(x)
    got = cpu.forward(x, keep_pre_activation=keep_pre)
    layout = {k: is_channels_last(v) for k, v in got.items() if v.ndim == 4 and v.shape[2:] != (1, 1)}
    want_cl = set() if keep_pre else {"stem", "expand", "dw", "project", "add"}
    assert {k for k, v in layout.items() if v and not k.endswith(".pre")} == want_cl, layout
    plain = minicaffe.Net(MBCONV, cpu.params, seed=7)
    plain.channels_last = False
    flat = plain.forward(x, keep_pre_activation=keep_pre)
    for name, want in ref.items():
        assert_close(got[name], want, 1e-5, f"blob {name}")
        assert flat[name].flags.c_contiguous, name
        assert_close(got[name], flat[name], 1e-5, f"blob {name} vs NCHW")


def test_inverted_residual_chains_run_as_one_kernel_unless_watched():
    """With ``fetch`` given and no hooks, expansion -> depthwise -> projection -> residual sum runs
    as one kernel and the inner blobs are not kept; a fetched inner blob ends the chain there
    (``dw`` fetched: only the expansion is folded into the depthwise layer); with a hook, or with
    every blob wanted, each layer runs and is kept. The outputs are the same every way."""
    side = 'layer { name: "side" type: "LRN" bottom: "expand" top: "side" lrn_param { local_size: 3 } }'
    proto = MBCONV.replace(side, "")
    assert proto != MBCONV
    x = np.random.default_rng(8).standard_normal((2, 3, 17, 15)).astype(np.float32)
    net = minicaffe.Net(proto, None, seed=9)
    ref = minicaffe.Net(proto, net.params, backend="numpy").forward(x)
    fused = net.forward(x, fetch=["fc", "dw"])
    assert "expand" not in net.blobs, "the expansion was stored"
    for name in ("fc", "dw"):
        assert_close(fused[name], ref[name], 1e-5, f"fused {name}")
    whole = net.forward(x, fetch=["fc", "add"])
    assert not {"expand", "dw", "project"} & set(net.blobs), "the block's inner blobs were stored"
    for name in ("fc", "add"):
        assert_close(whole[name], ref[name], 1e-5, f"fused block {name}")
    watched = net.forward(x, fetch=["fc", "expand"])
    assert_close(watched["expand"], ref["expand"], 1e-5, "expand when fetched")
    seen = []
    h = net.add_hook(after=lambda n, i, layer, tops: seen.append(layer.name))
    net.forward(x, fetch=["fc"])
    net.remove_hook(h)
    assert "expand" in seen and "expand" in net.blobs
    assert_close(net.forward(x)["expand"], ref["expand"], 1e-5, "expand with every blob")


def test_a_frozen_net_runs_as_one_program():
    """Frozen weights, a fetch list and no hook: the whole forward of a channels-last net (stem,
    chain with its residual sum, global pooling, inner product) runs as one executor program
    (:mod:`minicaffe.program`), with the values of the NumPy reference; every forward hands out new
    arrays (the previous results stay as they were); editable weights or a hook: layer by layer."""
    side = 'layer { name: "side" type: "LRN" bottom: "expand" top: "side" lrn_param { local_size: 3 } }'
    proto = MBCONV.replace(side, "")
    x = np.random.default_rng(10).standard_normal((2, 3, 17, 15)).astype(np.float32)
    net = minicaffe.Net(proto, None, seed=11)
    ref = minicaffe.Net(proto, net.params, backend="numpy").forward(x)
    net.freeze()
    got = net.forward(x, fetch=["fc", "pool"])
    assert [p for p in net._programs.values() if p is not None], "the forward did not run as a program"
    # the net keeps its own copy of the input
    assert not np.shares_memory(net.blobs["data"], x)
    assert_close(net.blobs["data"], x, 0.0, "input copy")
    for name in ("fc", "pool"):
        assert_close(got[name], ref[name], 1e-5, f"program {name}")
    pool = threads.pool()
    pool.ctl[threads.WANT] = 2               # with two threads, the helper joins before it starts
    try:
        both = net.forward(x, fetch=["fc", "pool"])
    finally:
        pool.ctl[threads.WANT] = 0
    for name in ("fc", "pool"):
        assert_close(both[name], ref[name], 1e-5, f"program {name}, caller and helper")
    first = {k: v.copy() for k, v in got.items()}
    for p in net._programs.values():
        p.prog.scratch[:] = np.nan           # no kernel may rely on what the arena held before
    again = net.forward(2 * x, fetch=["fc", "pool"])
    ref2 = minicaffe.Net(proto, net.params, backend="numpy").forward(2 * x)
    for name in ("fc", "pool"):
        assert not np.shares_memory(again[name], got[name]), name
        assert_close(got[name], first[name], 0.0, f"{name} of the first forward after a second")
        assert_close(again[name], ref2[name], 1e-5, f"program {name}, second input")
    net._programs.clear()
    seen = []
    h = net.add_hook(after=lambda n, i, layer, tops: seen.append(layer.name))
    net.forward(x, fetch=["fc"])
    net.remove_hook(h)
    assert not net._programs and "pool" in seen
    net.freeze(False)
    assert_close(net.forward(x, fetch=["fc"])["fc"], ref["fc"], 1e-5, "editable weights")
    assert not net._programs
    # weights edited, then frozen again: the program is made from the new values
    net.params["project"][0][...] *= -1
    net.freeze()
    edited = minicaffe.Net(proto, net.params, backend="numpy").forward(x)
    assert_close(net.forward(x, fetch=["fc"])["fc"], edited["fc"], 1e-5, "program after an edit and freeze")
    assert net._programs


ALEXLIKE = """input: "data" input_shape { dim: 1 dim: 3 dim: 55 dim: 53 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 kernel_size: 7 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 48 kernel_size: 5 pad: 2 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
        convolution_param { num_output: 40 kernel_size: 3 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "norm3" type: "LRN" bottom: "conv3" top: "norm3"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 } }
layer { name: "pool3" type: "Pooling" bottom: "norm3" top: "pool3"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc4" type: "InnerProduct" bottom: "pool3" top: "fc4" inner_product_param { num_output: 40 } }
layer { name: "relu4" type: "ReLU" bottom: "fc4" top: "fc4" }
layer { name: "drop4" type: "Dropout" bottom: "fc4" top: "fc4" }
layer { name: "fc5" type: "InnerProduct" bottom: "fc4" top: "fc5" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc5" top: "prob" }
"""


@pytest.mark.parametrize("batch,chunks", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("fc_rows", [False, True])
def test_a_caffenet_like_net_runs_as_one_program(monkeypatch, batch, chunks, fc_rows):
    """CaffeNet's layers in a whole-forward program: a strided convolution from RGB (direct,
    channels last), MAX pool + LRN in one pass, Winograd convolutions (5x5 in groups, 3x3), an LRN
    before an AVE pool (AlexNet's order), inner products (through the 1x1 GEMM, or streaming their
    weights in place: ``fc_rows``), Dropout, Softmax; ``chunks``: the Winograd layers one image at
    a time. Every fetched blob equals the NumPy reference's, whatever the arena held before; a
    fetched pool keeps its LRN apart."""
    from minicaffe import program
    if fc_rows:
        monkeypatch.setattr(program, "FC_ROWS_FROM", 0)
    if chunks:
        monkeypatch.setattr(program, "WINOGRAD_BUDGET", 1)
    x = np.random.default_rng(12).standard_normal((batch, 3, 55, 53)).astype(np.float32)
    net = minicaffe.Net(ALEXLIKE, None, seed=13)
    ref = minicaffe.Net(ALEXLIKE, net.params, backend="numpy").forward(x)
    net.freeze()
    for fetch in (["prob", "fc4", "norm1", "conv2"], ["pool1", "pool3", "prob"]):
        got = net.forward(x, fetch=fetch)
        progs = [p for p in net._programs.values() if p is not None]
        assert progs, f"the forward did not run as a program ({fetch})"
        kinds = {k for p in progs for k in p.kernel_layers}
        assert ("pool1+norm1" in kinds) == ("pool1" not in fetch), kinds
        # pad, transform, products, output transform for each chunk of images
        assert progs[0].kernel_layers.count("conv2") == 4 * (batch if chunks else 1), progs[0].kernel_layers
        for name in fetch:
            assert_close(got[name], ref[name], 2e-5, f"program {name}, batch {batch}")
        for p in progs:
            p.prog.scratch[:] = np.nan
        again = net.forward(x, fetch=fetch)
        for name in fetch:
            assert_close(again[name], ref[name], 2e-5, f"program {name} on a NaN arena, batch {batch}")
        net._programs.clear()


def test_a_repeated_program_forward_sees_every_change():
    """The repeated-forward path (``Net._forward_again``) runs only while nothing the program was
    made for has changed: another fetch list, input shape, a hook, a weight array replaced by
    another read-only one or made writeable again each take the full path, with their values."""
    net = minicaffe.Net(ALEXLIKE, None, seed=16)
    net.freeze()
    x = np.random.default_rng(17).standard_normal((2, 3, 55, 53)).astype(np.float32)
    ref = minicaffe.Net(ALEXLIKE, net.params, backend="numpy").forward(x)
    first = net.forward(x, fetch=["prob"])
    assert net._fast is not None
    again = net.forward(x, fetch=["prob"])
    assert not np.shares_memory(first["prob"], again["prob"]) and not np.shares_memory(net.blobs["data"], x)
    assert_close(again["prob"], ref["prob"], 2e-5, "repeated forward")
    assert list(net.forward(x, fetch=["fc5", "conv2"])) == ["fc5", "conv2"]
    assert_close(net.forward(x[:1], fetch=["prob"])["prob"], ref["prob"][:1], 2e-5, "another batch")
    seen = []
    h = net.add_hook(after=lambda n, i, layer, tops: seen.append(layer.name))
    net.forward(x, fetch=["prob"])
    net.remove_hook(h)
    assert "conv1" in seen
    # a weight array replaced (read-only, as frozen weights are): the program is made again
    net.forward(x, fetch=["prob"])
    assert net._fast is not None and net._fast[2] == x.shape
    w = -net.params["fc5"][0]
    w.flags.writeable = False
    net.params["fc5"][0] = w
    flipped = minicaffe.Net(ALEXLIKE, net.params, backend="numpy").forward(x)
    net.forward(x, fetch=["prob"])
    assert_close(net.forward(x, fetch=["prob"])["prob"], flipped["prob"], 2e-5, "a replaced weight array")
    # a weight array made writeable behind freeze()'s back and edited: no program
    assert net._fast is not None and net._fast[2] == x.shape
    a = net.params["fc4"][1]
    a.flags.writeable = True
    a += 1.0
    edited = minicaffe.Net(ALEXLIKE, net.params, backend="numpy").forward(x)
    assert_close(net.forward(x, fetch=["prob"])["prob"], edited["prob"], 2e-5, "a weight edited in place")


def test_programs_follow_the_input_shape():
    """Batches of changing size, with and without ``end``: every forward runs the plan of its own
    shapes (plans are keyed by a token per set of shapes, never by the id of a freed dict)."""
    net = minicaffe.Net(ALEXLIKE, None, seed=20)
    net.freeze()
    ref = minicaffe.Net(ALEXLIKE, net.params, backend="numpy")
    rng = np.random.default_rng(21)
    for n in (2, 1, 3, 1, 2, 3):
        x = rng.standard_normal((n, 3, 55, 53)).astype(np.float32)
        want = ref.forward(x)
        assert_close(net.forward(x, fetch=["prob"])["prob"], want["prob"], 2e-5, f"batch {n}")
        assert_close(net.forward(x, end="fc5", fetch=["fc5"])["fc5"], want["fc5"], 2e-5, f"batch {n}, end")


def test_a_program_ends_where_a_step_is_not_one_of_its_kernels():
    """A step a program has no kernel for (an LRN within channels): the program runs the layers
    before it (and returns what the rest reads), the rest runs layer by layer, with the same
    values; fetched blobs from either part are returned."""
    proto = ALEXLIKE.replace("lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }",
                             "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 norm_region: WITHIN_CHANNEL }")
    assert proto != ALEXLIKE
    x = np.random.default_rng(14).standard_normal((2, 3, 55, 53)).astype(np.float32)
    net = minicaffe.Net(proto, None, seed=15)
    ref = minicaffe.Net(proto, net.params, backend="numpy").forward(x)
    net.freeze()
    got = net.forward(x, fetch=["prob", "conv2"])
    progs = [p for p in net._programs.values() if p is not None]
    assert progs and progs[0].kernel_layers[-1] == "conv3", progs and progs[0].kernel_layers
    assert set(progs[0].fetch) == {"conv2", "conv3"}, progs[0].fetch
    for name in ("prob", "conv2"):
        assert_close(got[name], ref[name], 2e-5, f"{name}, program then layer by layer")


def test_an_inner_product_over_a_large_batch_reads_its_weights_in_place(monkeypatch):
    """Past ROWS_MAX_BATCH inputs an inner product with large weights runs in the program as
    products of its weight rows (in place) with the inputs packed chunk of K by chunk (the last
    chunk partial, the last panel of inputs partial), then bias, ReLU and the transpose: the
    values of the NumPy reference."""
    from minicaffe import program
    from minicaffe.layers.inner_product import ROWS_MAX_BATCH
    monkeypatch.setattr(program, "FC_ROWS_FROM", 0)
    monkeypatch.setattr(program, "K_CHUNK", 512)
    x = np.random.default_rng(18).standard_normal((ROWS_MAX_BATCH + 1, 3, 55, 53)).astype(np.float32)
    net = minicaffe.Net(ALEXLIKE, None, seed=19)
    ref = minicaffe.Net(ALEXLIKE, net.params, backend="numpy").forward(x)
    net.freeze()
    got = net.forward(x, fetch=["prob", "fc4"])
    progs = [p for p in net._programs.values() if p is not None]
    assert progs and progs[0].rest == len(net._steps_cache[1]), "not one program"
    K = int(np.prod(net.blob_shapes["pool3"][1:]))
    assert K % 512, K
    # the inputs packed, a product per chunk of K, the transpose
    assert progs[0].kernel_layers.count("fc4") == 2 + -(-K // 512), progs[0].kernel_layers
    for p in progs:
        p.prog.scratch[:] = np.nan
    got = net.forward(x, fetch=["prob", "fc4"])
    for name in ("prob", "fc4"):
        assert_close(got[name], ref[name], 2e-5, f"{name}, batch {ROWS_MAX_BATCH + 1}")


def test_kernel_clock_times_every_kernel_of_the_program(tmp_path, capsys):
    """scripts/kernel_clock.py: one row per kernel of the forward's program, each naming the layers
    it computes (the stem's padding copy and product, the chain's kernels), and the totals."""
    import importlib.util
    import os
    side = 'layer { name: "side" type: "LRN" bottom: "expand" top: "side" lrn_param { local_size: 3 } }'
    proto = tmp_path / "mb.prototxt"
    proto.write_text(MBCONV.replace(side, ""))
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "kernel_clock.py")
    spec = importlib.util.spec_from_file_location("kernel_clock", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "k.json"
    mod.main(["--prototxt", str(proto), "--blob", "pool", "--iterations", "3", "--json", str(out)])
    import json
    rows = json.loads(out.read_text())["kernels"]
    layers = [r["layers"] for r in rows]
    assert layers[0] == "stem" and "fc" in layers and "pool" in layers, layers
    assert any("dw" in name for name in layers) and all(r["median_us"] > 0 for r in rows)
    assert "sum of kernel medians" in capsys.readouterr().out
