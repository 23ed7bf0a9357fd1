"""decompose_layernorm: LayerNormalization -> centring, variance, 1/sqrt and affine in standard ops, the same
function; one whose Mean / InvStdDev outputs are read is left alone with the reason."""
import numpy as np
import pytest

from builders import ModelBuilder
from pass_helpers import assert_same_function, int64_const, op_types, run_pass
from rewrites.passes import decompose_layernorm


def layernorm_net(axis: int, n_out: int = 1):
    b = ModelBuilder(5)
    x = b.node("Reshape", [b.gemm("input", 8, 24), int64_const(b, [0, 4, 6])])
    shape = [4, 6][axis:] if axis >= 0 else [6]
    scale = b.const(b.rng.uniform(0.5, 1.5, shape))
    bias = b.const(b.rng.normal(0, 0.2, shape))
    outs = b.node("LayerNormalization", [x, scale, bias], n_out=n_out, axis=axis, epsilon=1e-3)
    return b.build({"input": [8]}, outs if n_out > 1 else [outs])


@pytest.mark.parametrize("axis", [-1, 1])
def test_layernorm_becomes_standard_ops_of_the_same_function(axis, rng):
    model = layernorm_net(axis)
    after, report = run_pass(model, decompose_layernorm.PASS)
    assert "LayerNormalization" not in op_types(after) and report.converted
    assert {"ReduceMean", "Sqrt", "Reciprocal"} <= set(op_types(after))
    assert_same_function(model, after, {"input": rng.normal(0, 2, (5, 8)).astype(np.float32)})


def test_a_layernorm_whose_statistics_are_read_is_left_alone():
    model = layernorm_net(-1, n_out=2)
    after, report = run_pass(model, decompose_layernorm.PASS)
    assert "LayerNormalization" in op_types(after)
    assert [why for _, why in report.skipped] == ["its Mean / InvStdDev outputs are used"]
