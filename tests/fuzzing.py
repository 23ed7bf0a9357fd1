"""Deterministic mutations of valid models and data for the fuzz tests (tests/test_fuzz.py, bounded, in CI)
and the long run (tests/fuzz_long.py). Every mutation is drawn from a seeded generator, so a failing case is
reproduced from its (seed model, seed) pair.

A case passes when the pipeline either works or raises an `Ann2SnnError` (the CLI's exit 2); anything else
is a crash (the CLI's exit 3 with "internal error")."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ground.errors import Ann2SnnError

CORPUS = Path(__file__).parent / "fuzz_corpus"


def corpus_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CORPUS.glob("*.onnx"))}


# ------------------------------------------------------------------ byte-level mutations

def flip_bytes(raw: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(raw)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    return bytes(data)


def truncate(raw: bytes, rng: np.random.Generator) -> bytes:
    return raw[:int(rng.integers(1, len(raw)))]


def splice(raw: bytes, rng: np.random.Generator) -> bytes:
    """Insert or overwrite a run of random bytes."""
    i = int(rng.integers(len(raw)))
    junk = rng.bytes(int(rng.integers(1, 16)))
    return raw[:i] + junk + raw[i + (len(junk) if rng.random() < 0.5 else 0):]


BYTE_MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "flip": flip_bytes, "truncate": truncate, "splice": splice}


# ------------------------------------------------------------------ graph-level mutations

def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _tensor_names(model: onnx.ModelProto) -> list[str]:
    names = [i.name for i in model.graph.input] + [t.name for t in model.graph.initializer]
    return names + [o for n in model.graph.node for o in n.output]


def dangling_input(m, rng):
    node = _pick(rng, m.graph.node)
    if node.input:
        node.input[int(rng.integers(len(node.input)))] = "no_such_tensor"


def cycle(m, rng):
    """Feed a node from the output of itself or of a node after it."""
    i = int(rng.integers(len(m.graph.node)))
    j = int(rng.integers(i, len(m.graph.node)))
    if m.graph.node[i].input and m.graph.node[j].output:
        m.graph.node[i].input[0] = m.graph.node[j].output[0]


def missing_initializer(m, rng):
    if m.graph.initializer:
        del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]


def delete_node(m, rng):
    del m.graph.node[int(rng.integers(len(m.graph.node)))]


def duplicate_output(m, rng):
    a, b = _pick(rng, m.graph.node), _pick(rng, m.graph.node)
    if a.output and b.output:
        b.output[0] = a.output[0]


def reshape_initializer(m, rng):
    """Mismatched shapes: same data, other dims (a transposed weight or one axis changed)."""
    init = _pick(rng, m.graph.initializer)
    arr = numpy_helper.to_array(init)
    if arr.ndim >= 2 and rng.random() < 0.5:
        arr = arr.swapaxes(0, 1)
    else:
        arr = np.resize(arr, tuple(int(d) + int(rng.integers(1, 3)) for d in arr.shape) or (2,))
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), init.name))


def retype_initializer(m, rng):
    init = _pick(rng, m.graph.initializer)
    arr = numpy_helper.to_array(init)
    dtype = _pick(rng, [np.float64, np.int64, np.int32, np.float16, np.uint8, np.bool_])
    init.CopyFrom(numpy_helper.from_array(arr.astype(dtype), init.name))


def retype_input(m, rng):
    vi = _pick(rng, m.graph.input)
    vi.type.tensor_type.elem_type = _pick(rng, [TensorProto.DOUBLE, TensorProto.INT64, TensorProto.STRING,
                                                TensorProto.BOOL, TensorProto.UINT8, 0])


def reshape_input(m, rng):
    vi = _pick(rng, m.graph.input)
    dims = vi.type.tensor_type.shape.dim
    choice = rng.random()
    if choice < 0.3 and len(dims):
        del dims[int(rng.integers(len(dims)))]
    elif choice < 0.6:
        dims.add().dim_value = int(rng.integers(1, 5))
    elif len(dims):
        dims[int(rng.integers(len(dims)))].dim_value = int(_pick(rng, [0, 1, 3, 10**12, 2**62]))


def huge_initializer_dims(m, rng):
    """Declared dims whose product is enormous while the data stays short."""
    init = _pick(rng, m.graph.initializer)
    del init.dims[:]
    init.dims.extend([10**6, 10**6] if rng.random() < 0.5 else [2**31, 2**31, 4])


def external_outside(m, rng):
    """An initializer whose external data points outside the model's folder."""
    init = _pick(rng, m.graph.initializer)
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    location = _pick(rng, ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "missing.bin"])
    init.external_data.add(key="location", value=location)
    if rng.random() < 0.5:
        init.external_data.add(key="length", value=str(int(rng.integers(0, 10**12))))


def change_op(m, rng):
    node = _pick(rng, m.graph.node)
    node.op_type = _pick(rng, ["Relu", "Conv", "Gemm", "MaxPool", "Add", "Concat", "Reshape", "Softmax",
                               "NoSuchOp", "Clip", "Flatten", "Transpose", "MatMul", "Sigmoid"])


def mangle_attribute(m, rng):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return
    attr = _pick(rng, _pick(rng, nodes).attribute)
    if attr.type == onnx.AttributeProto.INTS and attr.ints:
        attr.ints[int(rng.integers(len(attr.ints)))] = int(_pick(rng, [0, -1, -5, 7, 10**9]))
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = int(_pick(rng, [0, -1, 3, 10**9]))
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(_pick(rng, [np.nan, np.inf, -1.0, 0.0]))
    else:
        attr.name = "no_such_attribute"


def change_opset(m, rng):
    m.opset_import[0].version = int(_pick(rng, [1, 7, 10, 11, 13, 21, 22, 99]))


def nan_weights(m, rng):
    init = _pick(rng, m.graph.initializer)
    arr = numpy_helper.to_array(init).copy()
    if arr.dtype.kind == "f" and arr.size:
        arr.reshape(-1)[int(rng.integers(arr.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
        init.CopyFrom(numpy_helper.from_array(arr, init.name))


def huge_constant_of_shape(m, rng):
    """A ConstantOfShape whose constant shape makes an enormous tensor, summed to a scalar and added to the
    first node's input."""
    first = m.graph.node[0]
    shape = numpy_helper.from_array(np.array(_pick(rng, [[10**6, 10**6], [2**40], [1, 2**31 + 1]]), np.int64),
                                    "huge_shape")
    m.graph.initializer.append(shape)
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "")
    node = helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], name="huge_fill", value=zero)
    total = helper.make_node("ReduceSum", ["huge"], ["huge_total"], name="huge_total", keepdims=0)
    add = helper.make_node("Add", [first.input[0], "huge_total"], ["huge_sum"], name="huge_add")
    first.input[0] = "huge_sum"
    for new in (add, total, node):
        m.graph.node.insert(0, new)


def odd_clip(m, rng):
    """Relu -> Clip with odd bounds (min > max, negative max, equal bounds), or a Clip's bounds changed."""
    relus = [n for n in m.graph.node if n.op_type in ("Relu", "Clip")]
    if not relus:
        return
    node = _pick(rng, relus)
    lo, hi = _pick(rng, [(0.0, -1.0), (0.0, 0.0), (2.0, 1.0), (-1.0, 1.0), (0.0, 1e-30), (0.0, 1e30)])
    names = [f"{node.name}_lo", f"{node.name}_hi"]
    for name, value in zip(names, (lo, hi)):
        m.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    node.op_type = "Clip"
    del node.input[1:]
    node.input.extend(names)


def rename_nodes(m, rng):
    """Empty or duplicate node names."""
    name = _pick(rng, ["", "same"])
    for node in m.graph.node:
        if rng.random() < 0.5:
            node.name = name


def output_is_intermediate(m, rng):
    """Expose an intermediate tensor as an extra graph output, or a graph input as an output."""
    name = _pick(rng, [m.graph.input[0].name] + [o for n in m.graph.node for o in n.output])
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def zero_dims(m, rng):
    vi = _pick(rng, m.graph.input)
    dims = vi.type.tensor_type.shape.dim
    if len(dims) > 1:
        dims[int(rng.integers(1, len(dims)))].dim_value = 0


def producer_dims(m, rng):
    """Dims as other producers write them (issue 14): -1 (paddle2onnx), 0, cleared, a tf2onnx dim_param, or a
    damaged -3, on a random axis of an input, an output or a value_info."""
    values = [vi for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
              if vi.type.HasField("tensor_type") and vi.type.tensor_type.shape.dim]
    if not values:
        return
    dims = _pick(rng, values).type.tensor_type.shape.dim
    dim = dims[int(rng.integers(len(dims)))]
    value = _pick(rng, [-1, 0, None, "unk__7", -3])
    dim.Clear()
    if isinstance(value, int):
        dim.dim_value = value
    elif value:
        dim.dim_param = value


def inf_constant(m, rng):
    """An infinite constant in front of a random node's first input: Max(x, -inf) or Min(x, +inf) (identities
    that fold away), Clip(x, -inf, +inf), or Add(x, -inf) (a mask on activations, or damage)."""
    k = int(rng.integers(len(m.graph.node)))
    node = m.graph.node[k]
    if not node.input or not node.input[0]:
        return
    op, values = _pick(rng, [("Max", [-np.inf]), ("Min", [np.inf]), ("Clip", [-np.inf, np.inf]), ("Add", [-np.inf])])
    names = [f"fuzz_inf_{i}" for i in range(len(values))]
    for name, value in zip(names, values):
        m.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    m.graph.node.insert(k, helper.make_node(op, [node.input[0]] + names, ["fuzz_inf_out"], name="fuzz_inf"))
    node.input[0] = "fuzz_inf_out"


def int_input(m, rng):
    """The first input as int32 (jax2tf, token ids), cast to float inside the graph."""
    vi = m.graph.input[0]
    if not vi.type.HasField("tensor_type"):
        return
    vi.type.tensor_type.elem_type = _pick(rng, [TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL])
    for node in m.graph.node:
        node.input[:] = ["fuzz_cast_out" if i == vi.name else i for i in node.input]
    m.graph.node.insert(0, helper.make_node("Cast", [vi.name], ["fuzz_cast_out"], name="fuzz_cast",
                                            to=TensorProto.FLOAT))


HEADS = ("softmax", "sigmoid", "softmax_reshape", "jax2tf")


def append_head(m, rng, kind: str | None = None):
    """A head after the first graph output, as producers write them (issue 14): Softmax, Sigmoid, Softmax
    then Reshape, or jax2tf's softmax with keepdims=0 reductions brought back by Reshape and Expand to
    Concat(Shape(y)[0:1], [1])."""
    out = m.graph.output[0]
    y, kind = out.name, kind or _pick(rng, list(HEADS))
    if kind == "sigmoid":
        m.graph.node.append(helper.make_node("Sigmoid", [y], ["fuzz_head"], name="fuzz_head"))
    elif kind in ("softmax", "softmax_reshape"):
        m.graph.node.append(helper.make_node("Softmax", [y], ["fuzz_sm" if kind != "softmax" else "fuzz_head"],
                                             name="fuzz_softmax", axis=-1))
        if kind == "softmax_reshape":
            m.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), "fuzz_shape"))
            m.graph.node.append(helper.make_node("Reshape", ["fuzz_sm", "fuzz_shape"], ["fuzz_head"], name="fuzz_head"))
    else:
        m.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "fuzz_zero"),
                                    numpy_helper.from_array(np.array([1], np.int64), "fuzz_one")])
        m.graph.node.extend([
            helper.make_node("Shape", [y], ["fuzz_shape"], name="fuzz_shape"),
            helper.make_node("Slice", ["fuzz_shape", "fuzz_zero", "fuzz_one", "fuzz_zero"], ["fuzz_batch"],
                             name="fuzz_slice"),
            helper.make_node("Concat", ["fuzz_batch", "fuzz_one"], ["fuzz_kept"], name="fuzz_concat", axis=0),
            helper.make_node("ReduceMax", [y], ["fuzz_max"], name="fuzz_max", axes=[-1], keepdims=0),
            helper.make_node("Reshape", ["fuzz_max", "fuzz_kept"], ["fuzz_max_r"], name="fuzz_max_r"),
            helper.make_node("Expand", ["fuzz_max_r", "fuzz_kept"], ["fuzz_max_e"], name="fuzz_max_e"),
            helper.make_node("Sub", [y, "fuzz_max_e"], ["fuzz_shifted"], name="fuzz_sub"),
            helper.make_node("Exp", ["fuzz_shifted"], ["fuzz_exp"], name="fuzz_exp"),
            helper.make_node("ReduceSum", ["fuzz_exp", "fuzz_one"], ["fuzz_sum"], name="fuzz_sum", keepdims=0),
            helper.make_node("Reshape", ["fuzz_sum", "fuzz_kept"], ["fuzz_sum_r"], name="fuzz_sum_r"),
            helper.make_node("Expand", ["fuzz_sum_r", "fuzz_kept"], ["fuzz_sum_e"], name="fuzz_sum_e"),
            helper.make_node("Div", ["fuzz_exp", "fuzz_sum_e"], ["fuzz_head"], name="fuzz_div")])
    out.name = "fuzz_head"


def drop_output(m, rng):
    if rng.random() < 0.5:
        del m.graph.output[:]
    else:
        m.graph.output[0].name = "no_such_output"


GRAPH_MUTATIONS: dict[str, Callable[[onnx.ModelProto, np.random.Generator], None]] = {
    f.__name__: f for f in (dangling_input, cycle, missing_initializer, delete_node, duplicate_output,
                            reshape_initializer, retype_initializer, retype_input, reshape_input,
                            huge_initializer_dims, external_outside, change_op, mangle_attribute, change_opset,
                            nan_weights, drop_output, huge_constant_of_shape, odd_clip, rename_nodes,
                            output_is_intermediate, zero_dims, producer_dims, inf_constant, int_input, append_head)}


@dataclass
class Case:
    seed_model: str
    kind: str
    seed: int

    def __str__(self) -> str:
        return f"{self.seed_model}/{self.kind}/{self.seed}"


def make_case(case: Case, folder: Path, source: Path | None = None) -> Path:
    """Write the mutated model of `case` (of `source`, default its seed model) into `folder`; return its path."""
    source = source or corpus_models()[case.seed_model]
    rng = np.random.default_rng(case.seed)
    target = folder / f"{case.seed_model}.{case.kind}.{case.seed}.onnx"
    if case.kind in BYTE_MUTATIONS:
        target.write_bytes(BYTE_MUTATIONS[case.kind](source.read_bytes(), rng))
        return target
    model = onnx.load(str(source))
    GRAPH_MUTATIONS[case.kind](model, rng)
    if rng.random() < 0.3:  # a second mutation on top; skipped where the first made it inapplicable
        try:
            GRAPH_MUTATIONS[_pick(rng, sorted(GRAPH_MUTATIONS))](model, rng)
        except Exception:  # noqa: BLE001 - e.g. reading a tensor the first mutation moved outside
            pass
    target.write_bytes(model.SerializeToString())
    return target


def cases(count: int, seed: int = 0) -> list[Case]:
    """`count` cases spread evenly over the seed models and mutation kinds, seeded."""
    kinds = sorted(BYTE_MUTATIONS) + sorted(GRAPH_MUTATIONS)
    models = sorted(corpus_models())
    return [Case(models[i % len(models)], kinds[(i // len(models)) % len(kinds)], seed * 1_000_003 + i)
            for i in range(count)]


# ------------------------------------------------------------------ running the pipeline on a case

@dataclass
class Outcome:
    case: Case
    stage: str  # the last stage reached
    error: str  # "" when it converted; else the error's type and first line
    crash: bool  # raised something other than Ann2SnnError
    seconds: float
    traceback: str = ""


def write_data(folder: Path, samples: int = 6) -> dict[str, Path]:
    """Valid calibration data (uniform in [0, 1)) for every seed model, one .npz each."""
    from ground.data import input_specs
    paths = {}
    for name, path in corpus_models().items():
        rng = np.random.default_rng(0)
        arrays = {s.name: rng.random((samples,) + tuple(s.shape[1:])).astype(np.float32)
                  for s in input_specs(onnx.load(str(path)))}
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], **arrays)
    return paths


def run_pipeline(model_path: Path, data_path: Path, folder: Path, full: bool = True, few_spikes: bool = False) -> str:
    """inspect -> calibrate -> convert (rate coding, or FS coding with K = 3) -> simulate a few steps, as the
    CLI does; returns the last stage."""
    from rewrites.calibration.collect import calibrate
    from rewrites.config import Coding, ConvertOptions, NormSpec
    from rewrites.convert import convert_model, inspect_model
    from ground.load import load_model
    from ground.save import save_model
    from sim.simulate import simulate
    inspect_model(model_path)
    if not full:
        return "inspect"
    calibration = calibrate(model_path, data_path, batch_size=4)
    coding = {"coding": Coding.FS, "fs_K": 3} if few_spikes else {}
    result = convert_model(load_model(model_path), calibration, ConvertOptions(NormSpec.parse("max"), 0.5, 4,
                                                                               **coding), model_path, "calibration")
    snn = folder / (model_path.stem + ".snn.onnx")
    save_model(result.model, snn)
    simulate(snn, data_path, 2, batch_size=4)
    return "simulate"


def run_case(case: Case, folder: Path, data: dict[str, Path], full: bool = True) -> Outcome:
    path = make_case(case, folder)
    start = time.perf_counter()
    try:
        stage = run_pipeline(path, data[case.seed_model], folder, full, few_spikes=case.seed % 7 in (1, 3, 5))  # all seed models, both codings
        return Outcome(case, stage, "", False, time.perf_counter() - start)
    except Ann2SnnError as exc:
        return Outcome(case, "", f"{type(exc).__name__}: {exc}", False, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a crash is what we are looking for
        return Outcome(case, "", f"{type(exc).__name__}: {str(exc)[:300]}", True, time.perf_counter() - start,
                       traceback.format_exc())


def spiking_seeds(folder: Path, data: dict[str, Path]) -> dict[str, Path]:
    """The seed models converted (T = 4), as mutation sources for the simulator."""
    for name, path in corpus_models().items():
        run_pipeline(path, data[name], folder)
    return {name: folder / f"{name}.snn.onnx" for name in corpus_models()}


def run_spiking_case(case: Case, folder: Path, data: dict[str, Path], seeds: dict[str, Path]) -> Outcome:
    """Mutate the exported spiking model and simulate it with both engines; every other case also with two
    drain steps (sim/drain.py reads the mutated constants too)."""
    from sim.simulate import simulate
    path = make_case(case, folder, seeds[case.seed_model])
    drain = case.seed % 2 == 1
    start = time.perf_counter()
    try:
        for engine in ("numpy", "onnxruntime"):
            simulate(path, data[case.seed_model], 3, extra_t=2 if drain else 0, engine=engine, batch_size=4,
                     drain=drain)
        return Outcome(case, "simulate", "", False, time.perf_counter() - start)
    except Ann2SnnError as exc:
        return Outcome(case, "", f"{type(exc).__name__}: {exc}", False, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a crash is what we are looking for
        return Outcome(case, "", f"{type(exc).__name__}: {str(exc)[:300]}", True, time.perf_counter() - start,
                       traceback.format_exc())
