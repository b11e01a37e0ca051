"""Prototxt text-format parsing: syntax coverage, legacy V1 nets, and errors with line/column."""
import pytest
from conftest import MODELS

import minicaffe
from minicaffe.errors import ModelError, PrototxtError
from minicaffe.io.prototxt import Enum, parse


def test_syntax_features():
    m = parse("""
    # a comment
    name: 'single' "double"   # adjacent strings concatenate
    layer { name: "a\\tb" type: "ReLU" bottom: "x" top: "x" }  # nested, escapes
    layer < name: 'c' >
    dims: [1, 2, 3]
    f: -1.5e-3 g: 0x1F h: inf e: MAX ok: true
    msg: { inner { v: 1 } inner { v: 2 } };
    """)
    assert m.get("name") == "singledouble"
    assert [l.get("name") for l in m.getall("layer")] == ["a\tb", "c"]
    assert m.getall("dims") == [1, 2, 3]
    assert m.get("f") == pytest.approx(-1.5e-3) and m.get("g") == 31 and m.get("h") == float("inf")
    assert isinstance(m.get("e"), Enum) and m.get("e") == "MAX" and m.get("ok") == "true"
    assert [i.get("v") for i in m.get("msg").getall("inner")] == [1, 2]


@pytest.mark.parametrize("text,line,col,words", [
    ('layer {\n  name: "x"\n', 3, 1, "missing '}'"),
    ('layer {\n  name "x"\n}', 2, 8, "expected ':'"),
    ('a: 1\nb: }', 2, 4, "expected a value"),
    ('a: "unterminated\n', 1, 4, "unexpected character"),
    ('}', 1, 1, "unmatched"),
    ('a: 1.2.3', 1, 4, "unexpected character"),
])
def test_errors_have_line_and_column(text, line, col, words):
    with pytest.raises(PrototxtError) as e:
        parse(text, "bad.prototxt")
    assert (e.value.line, e.value.col) == (line, col), str(e.value)
    assert words in str(e.value) and str(e.value).startswith(f"bad.prototxt:{line}:{col}:")


def test_stock_prototxts_build():
    for name, top, shape in [("bvlc_reference_caffenet", "fc7", (10, 4096)), ("bvlc_alexnet", "pool5", (10, 256, 6, 6)),
                             ("bvlc_googlenet", "inception_5b/output", (10, 1024, 7, 7))]:
        net = minicaffe.Net(MODELS / f"{name}.deploy.prototxt", None, backend="numpy")
        assert net.blob_shapes[top] == shape


def test_legacy_v1_inputs_and_types(fixtures_dir):
    net = minicaffe.Net(fixtures_dir / "caffenet_small_v1.prototxt", None)
    assert net.input_shapes == {"data": (2, 3, 227, 227)}
    assert [l.type for l in net.layers][:4] == ["Convolution", "ReLU", "Pooling", "LRN"]
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
            'layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" '
            'convolution_param { num_output: 2 kernel_size: 3 } }')
    assert minicaffe.Net(text).blob_shapes["c"] == (1, 2, 6, 6)


def test_phase_rules_and_unknown_type():
    text = ('input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
            'layer { name: "d" type: "Dropout" bottom: "data" top: "data" include { phase: TRAIN } }\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert [l.name for l in minicaffe.Net(text).layers] == ["r"]
    with pytest.raises(ModelError, match="unknown or unsupported type 'Frobnicate'"):
        minicaffe.Net(text.replace('"ReLU"', '"Frobnicate"'))
