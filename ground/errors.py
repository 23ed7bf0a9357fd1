"""The error hierarchy of the library. Every error names the file, node or tensor at fault and, where one
exists, the next thing to do. The CLI maps each type to a one-line message and an exit code."""


from dataclasses import asdict, dataclass


class Ann2SnnError(Exception):
    """Base of every error the library raises on bad input."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputFileError(Ann2SnnError):
    """A file is missing, unreadable, or not what its name says."""


class ModelError(Ann2SnnError):
    """The ONNX graph is invalid or uses something the tool cannot handle."""


class DataError(Ann2SnnError):
    """Input data does not match the model (shape, dtype, values) or cannot be read safely."""


class CalibrationError(Ann2SnnError):
    """A calibration file is malformed, of another version, or made for another model."""


@dataclass(frozen=True)
class UnsupportedNode:
    node: str
    op_type: str
    input_shapes: list[list[int | str] | None]  # per input; None where unknown, a dim name where symbolic
    reason: str

    def describe(self) -> str:
        shapes = ", ".join("?" if s is None else "[" + ", ".join(map(str, s)) + "]" for s in self.input_shapes)
        return f"{self.node} ({self.op_type} on {shapes or 'no inputs'}: {self.reason})"


class UnsupportedNodesError(Ann2SnnError):
    """Nodes remain that no pass converts; `nodes` lists every one of them (the message only the first)."""

    def __init__(self, message: str, nodes: list[UnsupportedNode], hint: str | None = None):
        super().__init__(message, hint)
        self.nodes = nodes

    def to_json(self) -> dict:
        return {"error": self.message, "hint": self.hint, "unsupported_nodes": [asdict(n) for n in self.nodes]}


class PassError(Ann2SnnError):
    """A rewrite pass failed or broke the graph; names the pass and the passes before it."""


class SpikingModelError(Ann2SnnError):
    """A file given as a spiking model does not follow the exported-model contract."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (onnx, protobuf and onnxruntime write pages), for a one-line error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
