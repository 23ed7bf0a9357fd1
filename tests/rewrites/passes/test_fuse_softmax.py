"""fuse_softmax: the exp / sum / divide spellings of softmax become one Softmax of the same function."""
import numpy as np
import pytest

from builders import ModelBuilder
from pass_helpers import assert_same_function, int64_const, op_types, run_pass
from rewrites.passes import fuse_softmax


def spelled_softmax(guard: bool, keepdims: int):
    """Gemm -> [Sub(x, ReduceMax(x))] -> Exp -> Div(e, ReduceSum(e)); keepdims=0 brought back by Unsqueeze."""
    b = ModelBuilder(3, opset=18)
    x = b.gemm("input", 6, 5)
    axes = int64_const(b, [1])

    def reduce(op, t):
        r = b.node(op, [t, axes], keepdims=keepdims)
        return r if keepdims else b.node("Unsqueeze", [r, axes])
    u = b.node("Sub", [x, reduce("ReduceMax", x)]) if guard else x
    e = b.node("Exp", [u])
    return b.build({"input": [6]}, [b.node("Div", [e, reduce("ReduceSum", e)])])


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("keepdims", [1, 0])
def test_each_spelling_fuses_to_one_softmax_of_the_same_function(guard, keepdims, rng):
    model = spelled_softmax(guard, keepdims)
    after, report = run_pass(model, fuse_softmax.PASS)
    assert op_types(after).count("Softmax") == 1
    assert not {"Exp", "ReduceSum", "ReduceMax", "Div"} & set(op_types(after))
    assert report.converted
    assert_same_function(model, after, {"input": rng.normal(0, 3, (8, 6)).astype(np.float32)})


def test_an_exp_read_elsewhere_is_left_alone(rng):
    b = ModelBuilder(4, opset=18)
    e = b.node("Exp", [b.gemm("input", 6, 5)])
    y = b.node("Div", [e, b.node("ReduceSum", [e, int64_const(b, [1])], keepdims=1)])
    model = b.build({"input": [6]}, [y, e])  # the Exp is also an output: fusing would drop it
    after, _ = run_pass(model, fuse_softmax.PASS)
    assert "Exp" in op_types(after)
    assert_same_function(model, after, {"input": rng.normal(0, 1, (4, 6)).astype(np.float32)})
