"""The exported spiking file's contract (docs/contract.md), written once for the compiler that writes files and
the simulator that reads them: the operator domain and its version, the naming of state and of the drain gate,
the metadata keys, and (snnfile/operators.py) one table of the spiking operators and their traits."""
from __future__ import annotations

DOMAIN = "ai.ann2snn"
DOMAIN_VERSION = 1  # the contract's version: the version of DOMAIN in the file's opset imports
DEFAULT_DOMAINS = ("", "ai.onnx")

STATE_PREFIX = "state."
NEXT_SUFFIX = ".next"
DRIVE = "snn.drive"  # the optional scalar drain gate: 1 with input, 0 in a drain step
PRESENT = "snn.present"  # FS coding: the FirstStep node and its output, 1 at the first step only
BATCH_DIM = "N"  # the name of a state tensor's batch axis when the model's batch is not static

CONTRACT = ("one time step per call; inputs state.* start at zero and take their .next outputs at the next "
            "step; the first non-state output is the step's value, decoded as the running mean over steps")
DECODINGS = ("mean", "sum", "last")  # ann2snn.decoding: how the outputs of the steps give the result
CODINGS = ("direct", "fs")  # ann2snn.coding: the analog input at every step, or few-spikes (input at step 1)


def state_name(node: str, var: str) -> str:
    """The state input of a node's variable: `state.<node>.<var>`."""
    return f"{STATE_PREFIX}{node}.{var}"


def next_name(state: str) -> str:
    """The output that carries a state input to the next step."""
    return state + NEXT_SUFFIX


def is_state(name: str) -> bool:
    """True for a state input and for its `.next` output."""
    return name.startswith(STATE_PREFIX)


class Meta:
    """The metadata keys of an exported file."""
    VERSION = "ann2snn.version"
    CONTRACT = "ann2snn.contract"
    CODING = "ann2snn.coding"
    DECODING = "ann2snn.decoding"
    DEFAULT_T = "ann2snn.default_T"
    PHI = "ann2snn.phi"
    NORM = "ann2snn.norm"
    NONLINEAR = "ann2snn.nonlinear"
    SOURCE_FINGERPRINT = "ann2snn.source_fingerprint"
    LAYERS = "ann2snn.layers"
    DRAIN_STEPS = "ann2snn.drain_steps"
    NO_DRAIN = "ann2snn.no_drain"
    INPUT_SHAPES = "ann2snn.input_shapes"
    REFITS = "ann2snn.refits"  # the linear layers' weight refits (ann2snn/refit.py), JSON
    FS_K = "ann2snn.fs_K"  # FS coding: the firing steps per neuron (K) the file was converted with


def contract_version(opset_imports) -> int | None:
    """The contract version a file declares (its opset import of DOMAIN), None when it has none."""
    return next((op.version for op in opset_imports if op.domain == DOMAIN), None)


def version_problem(version: int) -> str | None:
    """Why a reader of this contract cannot read a file of that version, with what to do; None if it can."""
    if version > DOMAIN_VERSION:
        return (f"written for contract version {version} of {DOMAIN}; this ann2snn reads version {DOMAIN_VERSION} "
                "(upgrade ann2snn, or convert the model again with this version)")
    if version < 1:
        return f"declares contract version {version} of {DOMAIN}, which never existed (convert the model again)"
    return None
