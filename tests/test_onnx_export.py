"""ONNX export (minicaffe.export.onnx_export) run by ONNX Runtime against real Caffe and the numpy reference.

The exported graph is only a benchmark peer if it computes what Caffe computes, so: (1) the
small CaffeNet fixture at 227 and 224 (ceil-mode pooling gives 27/13/6 at 224) must match the
blobs real Caffe saved; (2) a hand-made net exercising the branches CaffeNet does not — padded
MAX pooling where Caffe's "last window starts in the padding" rule drops a row, padded AVE
pooling whose divisor counts the padding, an LRN with a large alpha and size 3
(so ONNX's alpha/size convention is visible), grouped padded conv, leaky ReLU, BatchNorm,
Scale, Concat, Eltwise with coefficients, Flatten + Gemm, in-place Dropout, Softmax — must
match minicaffe's numpy reference. Skipped when onnx/onnxruntime are not installed (the
``[bench]`` extra).
"""
import numpy as np
import pytest
from conftest import assert_close

from minicaffe import Net
from minicaffe.export import export_onnx, onnx_model

# every test here runs or builds an ONNX graph: without the packages the whole file skips
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4


def run_onnx(model, name, x):
    """model: onnx.ModelProto -> {output tensor name: array} from ONNX Runtime (CPU, 1 thread)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {name: x})))


@pytest.mark.parametrize("size", [227, 224])
def test_caffenet_small_matches_real_caffe(size, fixtures_dir):
    case = fixtures_dir / "caffenet_small"
    x = np.load(f"{case}_input_{size}.npy")
    ref = np.load(f"{case}_blobs_{size}.npz")
    net = Net(f"{case}.prototxt", f"{case}.caffemodel", backend="numpy")
    net.forward(x[:1])   # set the layers up for this spatial size (the graph's H, W are fixed)
    blobs = ["conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv5", "pool5", "fc6", "fc7", "fc8", "prob"]
    out = run_onnx(onnx_model(net, outputs=blobs), net.input_names[0], x)
    for b in blobs:
        # ONNX tensor "conv1" is the blob after relu1, like Caffe's saved blob
        assert_close(out[b], ref[b], TOL, f"onnx {b} at {size}")


PROTO = """
name: "onnx_branches"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "poolmax" type: "Pooling" bottom: "conv1" top: "poolmax"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "poolave" type: "Pooling" bottom: "conv1" top: "poolave"
        pooling_param { pool: AVE kernel_size: 3 stride: 3 pad: 2 } }
layer { name: "poolceil" type: "Pooling" bottom: "conv1" top: "poolceil"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm" type: "LRN" bottom: "poolceil" top: "norm"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2.0 } }
layer { name: "bn" type: "BatchNorm" bottom: "poolave" top: "poolave" }
layer { name: "sc" type: "Scale" bottom: "poolave" top: "poolave" scale_param { bias_term: true } }
layer { name: "cat" type: "Concat" bottom: "norm" bottom: "poolave" top: "cat" }
layer { name: "elt" type: "Eltwise" bottom: "norm" bottom: "poolceil" top: "elt"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -1.0 } }
layer { name: "eltmax" type: "Eltwise" bottom: "elt" bottom: "norm" top: "eltmax"
        eltwise_param { operation: MAX } }
layer { name: "flat" type: "Flatten" bottom: "poolmax" top: "flat" }
layer { name: "fc1" type: "InnerProduct" bottom: "cat" top: "fc1" inner_product_param { num_output: 12 } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "flat" top: "fc2" inner_product_param { num_output: 12 } }
layer { name: "sum" type: "Eltwise" bottom: "fc1" bottom: "fc2" top: "sum" }
layer { name: "prob" type: "Softmax" bottom: "sum" top: "prob" }
"""


def test_branches_match_numpy_reference():
    net = Net(PROTO, None, backend="numpy", seed=3)
    # by hand (Caffe's rule): MAX k2 s2 p1 on 9 -> ceil(9/2)+1 = 6, last window starts at
    # 10 = H + p (in the padding) -> 5; AVE k3 s3 p2 on 9 -> ceil(10/3)+1 = 5, 12 >= 11 -> 4;
    # MAX k3 s2 p0 on 9 -> ceil(6/2)+1 = 4. The clipping branch of the exporter is exercised.
    assert net.blob_shapes["poolmax"][2:] == (5, 5)
    assert net.blob_shapes["poolave"][2:] == (4, 4)
    assert net.blob_shapes["poolceil"][2:] == (4, 4)
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 9)).astype(np.float32) * 3
    ref = net.forward(x)
    blobs = ["conv1", "poolmax", "poolave", "poolceil", "norm", "cat", "elt", "eltmax", "flat", "fc1", "fc2", "prob"]
    out = run_onnx(onnx_model(net, outputs=blobs), "data", x)
    for b in blobs:
        assert_close(out[b], ref[b], TOL, f"onnx {b}")
    # the LRN term must matter here, or the alpha convention would go untested
    assert np.abs(ref["norm"] - ref["poolceil"] * 2.0 ** -0.75).max() > 0.1 * np.abs(ref["norm"]).max()


def test_in_place_naming_and_file(tmp_path):
    """The plain blob name is the last computing write (relu, not the pre-activation); Dropout
    emits no node; the file round-trips through onnx.load."""
    net = Net(PROTO, None, backend="numpy", seed=3)
    path = tmp_path / "net.onnx"
    names = export_onnx(net, path, outputs=["fc1", "prob"])
    assert names == {"fc1": "fc1", "prob": "prob"}
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers["fc1"].op_type == "Relu"
    assert producers["fc1.fc1"].op_type == "Gemm"
    assert not any(n.name == "drop" for n in model.graph.node)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:1] == ["N"]


def test_unsupported_layer_is_one_clear_error():
    from minicaffe.errors import ModelError
    proto = PROTO.replace('lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2.0 }',
                          'lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }')
    net = Net(proto, None, backend="numpy", seed=3)
    with pytest.raises(ModelError, match="'norm'.*WITHIN_CHANNEL"):
        onnx_model(net)
