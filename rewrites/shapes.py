"""Dynamic non-batch input dims (a detector's height and width), bound to static dims before anything else.

The spiking operators hold state shaped like their input, so every dim but the batch must be known. A model
whose input declares dynamic dims on other axes ([N, 3, 'h', 'w'], or -1 dims) is bound to the shape it
is converted for: the one given by `--input-shape NAME:d0,d1,...`, else the shape of the calibration data's
arrays, else the shape a calibration file recorded. `inspect` and `convert` both read the inputs through
`dynamic_inputs`, so they agree on what is bound and what cannot be."""
from __future__ import annotations

import json
from dataclasses import dataclass

import onnx

from ground.errors import Ann2SnnError, DataError, ModelError
from ground.protos import set_meta, infer_shapes
from snnfile import is_state, Meta

INPUT_SHAPES_KEY = Meta.INPUT_SHAPES  # {input: [dims]}, the batch by name
BOUND_AT_CONVERT = "bound at convert from the calibration data or --input-shape"

Shape = tuple  # one input's dims: int (static), str (a named dynamic dim) or None (unnamed)


@dataclass(frozen=True)
class DynamicInput:
    """A graph input with dynamic dims other than the batch (axis 0); `reason` says why they cannot be
    bound ("" when they can)."""
    name: str
    dims: Shape | None  # as declared; None: no shape declared (rank unknown)
    axes: tuple[int, ...]  # the dynamic non-batch axes
    reason: str = ""

    @property
    def bindable(self) -> bool:
        return not self.reason

    def describe(self) -> str:
        shown = "?" if self.dims is None else "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
        return f"input '{self.name}' {shown}: " + (self.reason or f"dynamic axes {list(self.axes)}, {BOUND_AT_CONVERT}")

    def to_json(self) -> dict:
        return {"name": self.name, "dims": None if self.dims is None else list(self.dims), "axes": list(self.axes),
                "bindable": self.bindable, "note": self.reason or BOUND_AT_CONVERT}


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers and not is_state(vi.name)]


def _declared(vi: onnx.ValueInfoProto) -> Shape | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


def dynamic_inputs(model: onnx.ModelProto) -> list[DynamicInput]:
    """Every data input whose dims past the batch are not all static, in graph order."""
    found = []
    for vi in _data_inputs(model):
        dims = _declared(vi)
        if dims is None:
            found.append(DynamicInput(vi.name, None, (), "declares no shape (its rank is unknown), so its dims "
                                      "cannot be bound; re-export the model with the input's rank declared"))
            continue
        axes = tuple(a for a, d in enumerate(dims) if a > 0 and not isinstance(d, int))
        if axes:
            found.append(DynamicInput(vi.name, dims, axes))
    return found


def parse_input_shapes(texts: list[str] | tuple[str, ...]) -> dict[str, Shape]:
    """`NAME:d0,d1,...` (repeatable) -> {NAME: (None, d1, ...)}: the first dim (the batch) may be any text or
    number and stays dynamic; the others must be positive integers. The name is everything before the last
    ':' (tf2onnx names end in ':0')."""
    shapes: dict[str, Shape] = {}
    for text in texts:
        name, sep, dims = text.rpartition(":")
        parts = [p.strip() for p in dims.split(",")]
        if not sep or not name or not parts or "" in parts:
            raise Ann2SnnError(f"--input-shape {text!r}: expected NAME:d0,d1,... (e.g. x:N,3,640,640)",
                               "the first dim is the batch (N or any number, it stays dynamic)")
        try:
            rest = tuple(int(p) for p in parts[1:])
        except ValueError:
            raise Ann2SnnError(f"--input-shape {text!r}: dims after the batch must be whole numbers",
                               "e.g. x:N,3,640,640") from None
        if any(d <= 0 for d in rest):
            raise Ann2SnnError(f"--input-shape {text!r}: dims must be positive", "e.g. x:N,3,640,640")
        if name in shapes:
            raise Ann2SnnError(f"--input-shape names input '{name}' twice")
        shapes[name] = (None,) + rest
    return shapes


def _text(shape) -> str:
    """[N, 3, h, w]: the batch (given as None) as N, an unnamed dynamic dim as ?."""
    return "[" + ", ".join(str(d) if d is not None else "N" if a == 0 else "?" for a, d in enumerate(shape)) + "]"


def resolve_input_shapes(model: onnx.ModelProto, given: dict[str, Shape] | None = None,
                         data: dict[str, tuple[int, ...]] | None = None, recorded: dict[str, list] | None = None,
                         data_path: str = "the data", recorded_path: str = "the calibration",
                         model_path: str = "model") -> dict[str, Shape]:
    """The shape every dynamic input is bound to, {name: (None, d1, ...)}: from `given` (--input-shape),
    else from the calibration data's array shapes `data`, else from the shapes a calibration file recorded.
    Empty when no input has dynamic non-batch dims. Raises where an input cannot be bound, where nothing
    gives its shape, or where --input-shape and the data disagree."""
    given = given or {}
    inputs = {vi.name: _declared(vi) for vi in _data_inputs(model)}
    for name, shape in given.items():
        if name not in inputs:
            raise Ann2SnnError(f"--input-shape names '{name}', which is not an input of the model",
                               f"its inputs: {', '.join(inputs)}")
        declared = inputs[name]
        if declared is not None and len(declared) != len(shape):
            raise Ann2SnnError(f"--input-shape {name}: {len(shape)} dims for an input of rank {len(declared)} "
                               f"({_text(declared)})", "give every dim, the batch first")
        for axis, (want, got) in enumerate(zip(declared or (), shape)):
            if axis > 0 and isinstance(want, int) and want != got:
                raise Ann2SnnError(f"--input-shape {name}: dim {got} at axis {axis}, the model declares {want}",
                                   f"the model's input is {_text(declared)}")
        if data and name in data and tuple(data[name][1:]) != tuple(shape[1:]):
            raise DataError(f"{data_path}: array for input '{name}' has shape {list(data[name])}, "
                            f"--input-shape says {_text(shape)}",
                            "give data of the shape to convert for, or drop --input-shape to bind to the data")
    bound: dict[str, Shape] = {}
    for dyn in dynamic_inputs(model):
        if not dyn.bindable:
            raise ModelError(f"{model_path}: input '{dyn.name}' {dyn.reason}")
        if dyn.name in given:
            shape = given[dyn.name]
        elif data and dyn.name in data:
            got = tuple(int(d) for d in data[dyn.name])
            if len(got) != len(dyn.dims) or any(isinstance(want, int) and want != g
                                                for want, g in list(zip(dyn.dims, got))[1:]):
                raise DataError(f"{data_path}: array for input '{dyn.name}' has shape {list(got)}, the model expects "
                                f"{_text(dyn.dims)}", "the first axis is the sample axis; the dynamic axes "
                                f"{list(dyn.axes)} take the data's sizes")
            shape = (None,) + got[1:]
        elif data is not None and not (recorded and dyn.name in recorded):
            raise DataError(f"{data_path}: no array for model input '{dyn.name}', whose dynamic dims at axes "
                            f"{list(dyn.axes)} it would give", "name the array 'x' (single input) or after each input")
        elif recorded and dyn.name in recorded:
            shape = (None,) + tuple(int(d) for d in recorded[dyn.name][1:])
            if len(shape) != len(dyn.dims):
                raise ModelError(f"{recorded_path}: recorded shape {recorded[dyn.name]} of input '{dyn.name}' does "
                                 f"not fit the model's {_text(dyn.dims)}", f"recalibrate, or give --input-shape")
        else:
            example = ",".join("N" if a == 0 else str(d) if isinstance(d, int) else "D" for a, d in enumerate(dyn.dims))
            raise ModelError(f"{model_path}: input '{dyn.name}' has dynamic dims at axes {list(dyn.axes)} "
                             f"({_text(dyn.dims)}) and nothing gives their size",
                             f"pass --input-shape {dyn.name}:{example} or --data with samples of that shape")
        bound[dyn.name] = shape
    return bound


def recorded_shapes(shapes: dict[str, Shape]) -> dict[str, list]:
    """`shapes` as the calibration file and the metadata write them: the batch as 'N'."""
    return {name: ["N"] + [int(d) for d in shape[1:]] for name, shape in sorted(shapes.items())}


def bind_input_shapes(model: onnx.ModelProto, shapes: dict[str, Shape]) -> onnx.ModelProto:
    """Rewrite the model in place with `shapes` as its inputs' dims (axis 0 stays as declared: the batch),
    drop the dynamic dims of value_info and outputs, infer shapes again, and record the shapes in the
    metadata (INPUT_SHAPES_KEY; export carries it into the spiking file). Returns the model."""
    if not shapes:
        return model
    graph = model.graph
    for vi in graph.input:
        if vi.name not in shapes:
            continue
        tt = vi.type.tensor_type
        old = list(tt.shape.dim)
        first = onnx.TensorShapeProto.Dimension()
        if old:
            first.CopyFrom(old[0])
        if not first.HasField("dim_value") and not first.dim_param:
            first.dim_param = "N"
        tt.shape.ClearField("dim")
        tt.shape.dim.add().CopyFrom(first)
        for d in shapes[vi.name][1:]:
            tt.shape.dim.add().dim_value = int(d)
    batch_names = {vi.type.tensor_type.shape.dim[0].dim_param for vi in graph.input
                   if vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_param}
    for vi in list(graph.output) + list(graph.value_info):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") and not (axis == 0 and d.dim_param in batch_names):
                d.Clear()
    try:
        inferred = infer_shapes(model)
    except ModelError as exc:
        raise ModelError(f"bound to {', '.join(f'{n} {_text(s)}' for n, s in shapes.items())}: {exc.message}",
                         "give the shape the model was made for with --input-shape") from exc
    graph.ClearField("value_info")
    graph.value_info.extend(inferred.graph.value_info)
    outputs = {o.name: o for o in inferred.graph.output}
    for vi in graph.output:
        if vi.name in outputs and outputs[vi.name].type.tensor_type.HasField("shape"):
            vi.type.CopyFrom(outputs[vi.name].type)
    set_meta(model, INPUT_SHAPES_KEY, json.dumps(
        {name: [next((vi.type.tensor_type.shape.dim[0].dim_param or vi.type.tensor_type.shape.dim[0].dim_value
                      for vi in graph.input if vi.name == name))] + [int(d) for d in shape[1:]]
         for name, shape in sorted(shapes.items())}))
    return model
