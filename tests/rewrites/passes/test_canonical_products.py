"""canonical_products: Pow(x, 2) -> Mul(x, x) and Div by a signal -> Mul by its Reciprocal, the same function;
a Div by a constant stays a Div (it is linear)."""
import numpy as np

from builders import ModelBuilder
from pass_helpers import assert_same_function, op_types, run_pass
from rewrites.passes import canonical_products


def products_net():
    b = ModelBuilder(6)
    x = b.gemm("input", 5, 4)
    square = b.node("Pow", [x, b.const(2.0)])
    positive = b.node("Add", [square, b.const(1.0)])  # a divisor that never reaches zero
    ratio = b.node("Div", [x, positive])
    halved = b.node("Div", [ratio, b.const(2.0)])
    return b.build({"input": [5]}, [halved])


def test_squares_and_divisions_by_a_signal_take_one_spelling(rng):
    model = products_net()
    after, report = run_pass(model, canonical_products.PASS)
    ops = op_types(after)
    assert "Pow" not in ops and ops.count("Reciprocal") == 1
    assert ops.count("Div") == 1  # the division by the constant 2
    mul = next(n for n in after.graph.node if n.op_type == "Mul" and n.input[0] == n.input[1])
    assert mul is not None and len(report.converted) == 2
    assert_same_function(model, after, {"input": rng.normal(0, 2, (6, 5)).astype(np.float32)})
