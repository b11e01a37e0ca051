"""Property-based fuzzing of the readers: thousands of mutated and truncated prototxt texts and
caffemodel bytes. Only the project's documented error type (MinicaffeError) may escape: never an
IndexError, MemoryError, RecursionError or a hang (every length read from a file is bounded)."""
import numpy as np
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicaffe
from minicaffe.errors import MinicaffeError
from minicaffe.io.caffemodel import read_caffemodel
from minicaffe.io.prototxt import parse

PROTO = (FIXTURES / "caffenet_small.prototxt").read_text() if FIXTURES.is_dir() else ""
PROTO_V1 = (FIXTURES / "caffenet_small_v1.prototxt").read_text() if FIXTURES.is_dir() else ""
MODEL = (FIXTURES / "caffenet_small.caffemodel").read_bytes() if FIXTURES.is_dir() else b""
MODEL_V1 = (FIXTURES / "caffenet_small_v1.caffemodel").read_bytes() if FIXTURES.is_dir() else b""

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures missing")

TOKENS = ["{", "}", ":", '"', "'", "#", "\n", "[", "]", "<", ">", ",", "-", "1e99", "0x", "layer", "layers",
          "input_dim:", "num_output: 0", "kernel_size: 100", "group: 3", "stride: 0", "pad: -1", "top: \"x\"",
          "bottom: \"nope\"", "type: \"Frob\"", "type: CONVOLUTION", "local_size: 2", "pool: STOCHASTIC",
          "num_output: 99999999", "\\", "\x00"]


@st.composite
def mutated_text(draw):
    text = draw(st.sampled_from([PROTO, PROTO_V1]))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(text)))
        if kind == 0:
            text = text[:pos]
        elif kind == 1:
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        elif kind == 2:
            end = draw(st.integers(pos, min(len(text), pos + 40)))
            text = text[:pos] + text[end:]
        else:
            text = text[:pos] + draw(st.text(max_size=8)) + text[pos:]
    return text


def _numbers_ok(net):
    return all(np.isfinite(a).all() for v in net.params.values() for a in v)


def _one_clear_line(e, *where):
    """The house rule for bad input: one line that says where (any of ``where``) and what."""
    msg = str(e)
    assert "\n" not in msg, f"{type(e).__name__} spans lines: {msg!r}"
    assert any(w in msg for w in where), f"{type(e).__name__} does not say where ({' / '.join(where)}): {msg!r}"


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated_text())
def test_prototxt_mutations(text):
    try:
        parse(text)
        net = minicaffe.Net(text, None, backend="numpy")
        assert _numbers_ok(net)
    except MinicaffeError as e:
        # inline text has no file name: the parser gives <prototxt>:line:col, net building the layer
        # (a mutated text without "{" is taken for a file path, and that is what the message names)
        _one_clear_line(e, "<prototxt>", "layer '", "cannot read file")


@st.composite
def mutated_bytes(draw):
    data = bytearray(draw(st.sampled_from([MODEL, MODEL_V1])))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3))
        # bias positions towards the structural headers near the start and the layer boundaries
        pos = draw(st.one_of(st.integers(0, 200), st.integers(0, len(data))))
        pos = min(pos, len(data))
        if kind == 0:
            data = data[:pos]
        elif kind == 1:
            if pos < len(data):
                data[pos] = draw(st.integers(0, 255))
        elif kind == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        else:
            end = draw(st.integers(pos, min(len(data), pos + 64)))
            del data[pos:end]
    return bytes(data)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated_bytes())
def test_caffemodel_mutations(tmp_path_factory, data):
    p = tmp_path_factory.getbasetemp() / "fuzz.caffemodel"
    p.write_bytes(data)
    try:
        read_caffemodel(p)
        minicaffe.Net(FIXTURES / "caffenet_small.prototxt", p, backend="numpy")
    except MinicaffeError as e:
        _one_clear_line(e, p.name)
