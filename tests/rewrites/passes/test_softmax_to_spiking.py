"""softmax_to_spiking: exp of the input less its row max, its sum, 1/sum; the file converges to the Softmax."""
import numpy as np

from builders import ModelBuilder
from ground.sessions import Session
from rewrites.layer_error import relative_error
from spiking_helpers import convert_with_data, step_by_contract

ROW = 16


def _softmax_inside() -> tuple:
    """input [N, 16] -> Gemm -> + 40 * mean(input) (one level per row) -> Softmax -> Gemm -> [N, 4]: the rows'
    levels differ by tens, which a single calibrated shift turns into sums over dozens of decades."""
    b = ModelBuilder(opset=17)
    level = b.node("Mul", [b.node("ReduceMean", ["input"], axes=[1], keepdims=1), b.const(np.float32(40.0))])
    p = b.node("Softmax", [b.node("Add", [b.gemm("input", ROW, ROW), level])], axis=-1)
    return b.build({"input": [ROW]}, [b.gemm(p, ROW, 4)]), p


def test_the_sum_of_exp_of_the_shifted_row_lies_in_one_to_the_row_length(tmp_path):
    model, _ = _softmax_inside()
    x = np.random.default_rng(0).normal(size=(64, ROW)).astype(np.float32)
    _, result = convert_with_data(model, x, tmp_path)
    (layer,) = [l for l in result.layers if l.get("op") == "Softmax"]
    low, high = layer["sum_range"]
    assert 1.0 - 1e-6 <= low <= high <= ROW + 1e-6  # the row max contributes exp(0) = 1; each term is <= 1
    assert layer["shifted_range"][1] == 0.0
    reciprocal = next(f for f in result.ugo_fits if f["op"] == "Reciprocal")
    assert reciprocal["range"][0] >= 1.0 - 1e-6 and reciprocal["max_relative_error"] < 0.01


def test_the_file_converges_to_the_softmax_whatever_the_rows_levels(tmp_path):
    model, _ = _softmax_inside()
    x = np.random.default_rng(0).normal(size=(64, ROW)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path)
    test = np.random.default_rng(1).normal(size=(32, ROW)).astype(np.float32)
    ann = Session(model, "ann").run(None, {"input": test})[0]
    errors = [relative_error(step_by_contract(snn, {"input": test}, T), ann) for T in (4, 64)]
    assert errors[1] < errors[0]
    assert errors[1] < 0.01
