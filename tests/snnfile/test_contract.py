"""The contract package is the one place the exported file's facts live, and the layers read top down.

Every spiking operator of the contract has a function body (what a file ships), a NumPy kernel (what the
simulator runs) and its traits; the simulator never imports the compiler; onnxruntime sessions are built in
one function; the domain is written once; no module imports one that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from snnfile.bodies import BODIES, function_body
from sim.model import spiking_from_proto
from sim.neurons import NEURON_KERNELS
from ground.errors import SpikingModelError
from snnfile import DOMAIN, DOMAIN_VERSION, Meta, is_state, next_name, state_name
from snnfile.operators import OPERATORS, Energy
from conftest import REPO

ROOT = REPO
PACKAGES = ("ground", "snnfile", "rewrites", "sim", "ann2snn", "ann2snn_cli")
LAYER = {"ground": 0, "snnfile": 1, "rewrites": 2, "sim": 2, "ann2snn": 3, "ann2snn_cli": 4}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, deferred imports (inside functions) included."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            edges[name] |= {t for t in map(resolve, targets) if t and t != name}
    return edges


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_every_operator_has_a_body_a_kernel_and_traits(op):
    spec = OPERATORS[op]
    assert op in BODIES, f"{op}: no ONNX function body in snnfile/bodies.py"
    assert op in NEURON_KERNELS, f"{op}: no NumPy kernel in sim/neurons.py"
    assert isinstance(spec.energy, Energy) and isinstance(spec.fires, bool) and isinstance(spec.time_normalised, bool)
    assert spec.fires or spec.nir, f"{op}: an operator that exports to NIR must fire spikes"
    function = function_body(spec, 17)
    assert (function.domain, function.name) == (DOMAIN, op)
    assert list(function.input) == list(spec.inputs) + list(spec.state)
    assert list(function.output) == ["Y"] + list(spec.state_outputs)
    assert not spec.time_normalised or not spec.drainable  # a count-dividing operator cannot drain
    assert set(BODIES) == set(OPERATORS) == set(NEURON_KERNELS)


def test_state_naming_round_trips():
    name = state_name("conv1/relu", "v")
    assert name == "state.conv1/relu.v" and is_state(name) and is_state(next_name(name))
    assert next_name(name) == "state.conv1/relu.v.next" and not is_state("x")


def test_the_layers_read_top_down_and_the_simulator_never_imports_the_compiler():
    modules = _modules()
    upward = [(a, b) for a, targets in _imports(modules).items() for b in targets
              if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]
              or {a.split(".")[0], b.split(".")[0]} == {"rewrites", "sim"}]
    assert not upward, f"imports against the layering (CLI -> API -> compiler / runtime -> contract -> ground): {upward}"


def test_the_commands_reach_the_compiler_and_the_runtime_only_through_the_api():
    """The CLI is parse -> library call -> render: it imports `ann2snn`, the shared ground and itself."""
    through = [(a, b) for a, targets in _imports(_modules()).items() if a.startswith("ann2snn_cli.")
               for b in targets if b.split(".")[0] in ("rewrites", "sim", "snnfile")]
    assert not through, f"commands that bypass the API: {through}"


def test_no_import_cycle():
    edges = _imports(_modules())
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _package_sources():
    for name, path in _modules().items():
        yield name, path.read_text()


def test_sessions_are_built_in_one_function_and_the_domain_is_written_once():
    builders = [name for name, text in _package_sources() if "InferenceSession(" in text]
    assert builders == ["ground.sessions"], builders
    writers = [name for name, text in _package_sources() if f'"{DOMAIN}"' in text]
    assert writers == ["snnfile"], writers


def _spiking_file(version: int) -> onnx.ModelProto:
    spec = OPERATORS["IFNeuron"]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    v = helper.make_tensor_value_info("state.n.v", onnx.TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    v_next = helper.make_tensor_value_info("state.n.v.next", onnx.TensorProto.FLOAT, [1, 2])
    node = helper.make_node("IFNeuron", ["x", "theta", "fire", "state.n.v"], ["y", "state.n.v.next"], name="n",
                            domain=DOMAIN)
    inits = [onnx.numpy_helper.from_array(np.array(1.0, np.float32), "theta"),
             onnx.numpy_helper.from_array(np.array(0.5, np.float32), "fire")]
    graph = helper.make_graph([node], "g", [x, v], [y, v_next], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, version)],
                              functions=[function_body(spec, 17)])
    model.metadata_props.add(key=Meta.LAYERS, value="[]")
    return model


def test_the_reader_checks_the_contract_version():
    spiking_from_proto(_spiking_file(DOMAIN_VERSION), Path("ok.snn.onnx"))
    with pytest.raises(SpikingModelError, match=r"new\.snn\.onnx: written for contract version 2 .*upgrade ann2snn"):
        spiking_from_proto(_spiking_file(DOMAIN_VERSION + 1), Path("new.snn.onnx"))
