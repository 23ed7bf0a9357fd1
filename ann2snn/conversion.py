"""`ann2snn convert` as one library call: calibration from a file, from data or from the graph itself, the
defaults chosen on the data where the caller left them open, the conversion, and any bias correction."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ann2snn.refit import Refit
from ann2snn.tune import LayerChoice, apply_charges, apply_refits, settings_of, tunable_layers, tune, tuned
from rewrites.calibration.collect import calibrate
from ground.data import array_shapes, input_specs, load_dataset
from rewrites.calibration.stats import Calibration
from rewrites.config import DEFAULT_NORM, FS_DEFAULT_K, Coding, ConvertOptions, Neuron, Nonlinear, NormSpec
from rewrites.convert import ConversionResult, convert_model, normalise, refuse_masks
from ground.errors import Ann2SnnError, CalibrationError
from rewrites.footprint import Footprint, footprint
from rewrites.layer_error import LayerErrors, layer_errors
from ground.load import load_model, non_finite_constants
from ground.protos import fingerprint
from ground.save import save_model, write_text_atomic
from rewrites.passes import NORMALISE, PASSES
from rewrites.patterns.qcfs import qcfs_levels
from rewrites.shapes import bind_input_shapes, recorded_shapes, resolve_input_shapes
from snnfile import Meta

DEFAULT_T = 8


@dataclass(frozen=True)
class ConvertRequest:
    """What the caller asked for. None: chosen by `convert` (T: L for a QCFS network, else DEFAULT_T; the
    neuron, threshold rule, per-channel, phi and bias correction of every ReLU layer: measured on the data,
    ann2snn/tune.py; drain steps: L for a QCFS network converted to signed neurons, else 0)."""

    T: int | None = None
    norm: str | None = None
    per_channel: bool | None = None
    neuron: str | None = None
    phi: float | None = None
    tmax: int | None = None
    bias_correction: bool | None = None
    drain_steps: int | None = None
    weight_norm: bool = False
    nonlinear: str = "ugo"
    ugo_size: int | None = None
    allow_float: tuple[str, ...] = ()
    skip_passes: tuple[str, ...] = ()
    limit: int | None = None  # samples of the data used (calibration, tuning, bias correction)
    check: bool = True  # the onnxruntime self-check of the normalising passes
    input_shapes: dict | None = None  # --input-shape: {input: (None, d1, ...)} for dynamic dims (rewrites/shapes.py)
    coding: str = "rate"  # or "fs": few-spikes neurons (rewrites/fs.py)
    K: int | None = None  # FS: firing steps per neuron; None: FS_DEFAULT_K
    overlap: int = 0  # FS: steps a layer starts before its input is final
    refit: bool = True  # with the per-layer search: refit the linear layers' weights (ann2snn/refit.py)
    layer_error: bool = False  # measure each UGO subnet's share of the output error (rewrites/layer_error.py)

    @property
    def tuning_given(self) -> bool:
        """The caller fixed how the ReLU layers convert: nothing is searched."""
        return any(v is not None for v in (self.norm, self.per_channel, self.neuron, self.phi, self.tmax,
                                           self.bias_correction)) or self.weight_norm


@dataclass
class Converted:
    result: ConversionResult
    options: ConvertOptions
    calibration: str  # where the thresholds came from: the file, the data, or "the graph"
    choices: list[LayerChoice] = field(default_factory=list)  # per layer, when chosen on the data
    refits: list[Refit] = field(default_factory=list)  # per linear layer, when the search refitted
    notes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list] = field(default_factory=dict)  # what dynamic inputs were bound to, batch 'N'
    step_memory: Footprint | None = None  # per sample, one call of the exported file
    ann_memory: Footprint | None = None  # per sample, one inference of the ANN at the same shapes
    layer_errors: LayerErrors | None = None  # with layer_error: each UGO subnet's error at the output

    @property
    def proto(self) -> onnx.ModelProto:
        """The exported spiking model."""
        return self.result.model

    @property
    def default_T(self) -> int:
        """The steps the file is meant to be run for (FS coding: the steps its layers need)."""
        return int(next(p.value for p in self.proto.metadata_props if p.key == Meta.DEFAULT_T))

    def save(self, path: str | Path) -> Path:
        """Write the spiking model (atomically; weights over 2 GB to an external data file beside it)."""
        save_model(self.result.model, path)
        return Path(path)

    def to_dict(self) -> dict:
        """What was converted and how, as `convert --json` prints it (less the output path)."""
        result, options = self.result, self.options
        return {
            "calibration": self.calibration, "norm": str(options.norm), "phi": options.phi,
            "coding": options.coding.value, "K": options.fs_K if options.fs else None,
            "overlap": options.fs_overlap if options.fs else None,
            "default_T": self.default_T, "drain_steps": options.drain_steps,
            "neuron": options.neuron.value, "tmax": options.tmax,
            "weight_norm": options.weight_norm, "per_channel": options.per_channel,
            "chosen": {c.node: c.to_json() for c in self.choices},
            "refits": [r.to_json() for r in self.refits],
            "bias_correction": [vars(c) for c in result.corrections],
            "normalise_max_error": result.normalise_error,
            "ops_before": dict(sorted(result.ops_before.items())),
            "ops_after": dict(sorted(result.ops_after.items())),
            "passes": [{"name": r.name, "converted": r.converted,
                        "skipped": [{"node": n, "reason": why} for n, why in r.skipped]} for r in result.reports],
            "nonlinear": options.nonlinear.value,
            "ugo": result.ugo_fits,
            "kept_float": [n.node for n in result.kept_float],
            "notes": self.notes,
            "input_shapes": self.input_shapes,
            "layers": result.layers,
            "step_memory_per_sample": self.step_memory.to_json() if self.step_memory else None,
            "ann_memory_per_sample": self.ann_memory.to_json() if self.ann_memory else None,
            "layer_errors": self.layer_errors.to_dict() if self.layer_errors else None,
        }


FS_DEFAULT_NORM = "max"  # a grid of theta / 1023 costs less than clipping the top percent (docs/fs.md)
RATE_ONLY = {"bias_correction": "--bias-correction", "drain_steps": "--drain-steps", "neuron": "--neuron",
             "tmax": "--tmax", "T": "--T"}


def check_request(request: ConvertRequest, calib, save_calib) -> None:
    """Refuse what cannot be asked together, before any work."""
    coding = Coding.parse(request.coding)
    if coding is Coding.FS:
        given = [flag for key, flag in RATE_ONLY.items() if getattr(request, key) is not None]
        given += ["--weight-norm"] if request.weight_norm else []
        if given:
            raise Ann2SnnError(f"{', '.join(given)} do(es) not apply to --coding fs",
                               "leave it out: an FS file runs as many steps as its layers need (--K sets the "
                               "spikes per neuron)")
    elif request.K is not None or request.overlap:
        flag = "--K" if request.K is not None else "--overlap"
        raise Ann2SnnError(f"{flag} applies to --coding fs only", f"add --coding fs, or leave {flag} out")
    for name in request.skip_passes:
        if name not in PASSES:
            raise Ann2SnnError(f"unknown pass {name!r}", f"passes: {', '.join(PASSES)}")
        if name not in {p.name for p in NORMALISE}:
            raise Ann2SnnError(f"pass {name!r} cannot be skipped", "only normalising passes can be skipped")
    if calib is not None and save_calib is not None:
        raise Ann2SnnError("--save-calib keeps a calibration made from --data; --calib already names one")


def convert(model_path: str | Path, request: ConvertRequest = ConvertRequest(),
            calib: Calibration | str | Path | None = None, data=None,
            save_calib: str | Path | None = None) -> Converted:
    """`calib`: a Calibration or the path of its JSON; `data`: what ground.data.load_dataset reads."""
    check_request(request, calib, save_calib)
    model_path = Path(model_path)
    ann = load_model(model_path)
    source_fp = fingerprint(ann)  # of the file as given: a calibration of it fits the bound model too
    calibration = calib if isinstance(calib, Calibration) else Calibration.read(calib) if calib is not None else None
    calib_name = "the calibration given" if isinstance(calib, Calibration) else str(calib)
    recorded = calibration.input_shapes if calibration is not None else {}
    known = {**recorded, **(request.input_shapes or {})}  # the size an image folder is read at
    bound = resolve_input_shapes(ann, request.input_shapes,
                                 array_shapes(data, input_specs(ann), known) if data is not None else None,
                                 calibration.input_shapes if calibration is not None else None,
                                 str(data), calib_name, str(model_path))
    bind_input_shapes(ann, bound)
    infinite = non_finite_constants(ann)
    refuse_masks(ann, model_path, infinite)
    levels = qcfs_levels(normalise(ann)[0])
    T = request.T or levels or DEFAULT_T
    notes = [f"constant {c.describe()} holds infinite values where they are meant" for c in infinite]
    given = request.input_shapes or {}
    notes += [f"input '{name}' bound to [{', '.join(map(str, dims))}] (from {'--input-shape' if name in given else data or calib_name}); the "
              "file is built for that shape" for name, dims in recorded_shapes(bound).items()]
    if calibration is not None:
        source = calib_name
    elif data is not None:
        calibration, source = calibrate(model_path, data, limit=request.limit, input_shapes=request.input_shapes), \
            str(data)
    else:
        calibration, source = Calibration(source_fp, str(model_path), 0, {}), "the graph"
    if save_calib is not None:
        if data is None:
            raise Ann2SnnError("--save-calib needs --data", "give the calibration samples to calibrate on")
        write_text_atomic(save_calib, calibration.to_json())
    coding = Coding.parse(request.coding)
    fs = coding is Coding.FS
    if fs and levels:
        raise Ann2SnnError(f"{model_path}: a network trained with QCFS activations ({levels} levels) converts with "
                           "rate coding only: its clip-floor chains have no few-spikes form yet",
                           "leave out --coding fs: `ann2snn convert MODEL` reads its thresholds from the graph "
                           "and is exact at T = L with L drain steps")
    if fs:
        T = DEFAULT_T
    neuron = Neuron.parse(request.neuron) if request.neuron else Neuron.SIGNED if levels else Neuron.IF
    drain = request.drain_steps if request.drain_steps is not None else T if levels and neuron is Neuron.SIGNED else 0
    norm = request.norm or (calibration.method if calib else FS_DEFAULT_NORM if fs else DEFAULT_NORM)
    options = ConvertOptions(NormSpec.parse(norm), 0.5 if request.phi is None else request.phi, T,
                             request.skip_passes, neuron, request.tmax, request.weight_norm,
                             bool(request.per_channel), Nonlinear.parse(request.nonlinear), request.ugo_size,
                             request.allow_float, drain, coding=coding, fs_K=request.K or FS_DEFAULT_K,
                             fs_overlap=request.overlap)
    try:
        result = convert_model(ann, calibration, options, model_path, source, check=request.check,
                               source_fingerprint=source_fp)
    except CalibrationError as exc:
        if data is not None or calib is not None:
            raise
        raise CalibrationError(f"{model_path}: its thresholds are not in the graph and no calibration was given "
                               f"({exc.message})", "pass --data CALIB.npz (samples of the model's input) to "
                               "calibrate on the fly, or --calib FILE made by `ann2snn calibrate`") from exc
    choices: list[LayerChoice] = []
    refits: list[Refit] = []
    dataset = load_dataset(data, input_specs(ann), request.limit) if data is not None else None
    if not fs and not request.tuning_given and tunable_layers(result.layers):
        if dataset is None:
            notes.append("layers converted with the default rule, not chosen on data: give --data to measure "
                         "each layer's options")
        else:
            choices, refits, refitted = tune(model_path, ann, calibration, options, dataset, refit=request.refit)
            options = ConvertOptions(**{**vars(options), "layer_settings": settings_of(choices)})
            checked = result.normalise_error
            result = convert_model(ann, calibration, options, model_path, source, check=False,
                                   source_fingerprint=source_fp)
            result.normalise_error = checked  # the same normalising passes, checked above
            apply_charges(result.model, choices)
            apply_refits(result.model, refitted)
            result = tuned(result, choices, refits)
    if request.bias_correction:
        if dataset is None:
            raise Ann2SnnError("--bias-correction needs --data", "give the calibration data")
        from sim.bias_correction import correct_biases
        result.model, result.corrections = correct_biases(result.model, model_path.with_suffix(".snn.onnx"),
                                                          model_path, dataset, T)
    errors = None
    if request.layer_error:
        if fs:
            raise Ann2SnnError("--layer-error measures UGO subnets, which --coding fs does not write",
                               "leave out --coding fs, or --layer-error")
        if dataset is None:
            raise Ann2SnnError("--layer-error needs --data", "give the samples to measure the output error on")
        errors = layer_errors(ann, calibration, options, dataset)
        if errors is None:
            notes.append("--layer-error: the model has no UGO subnet to measure")
    return Converted(result, options, source, choices, refits, notes, recorded_shapes(bound), footprint(result.model),
                     footprint(ann), errors)
