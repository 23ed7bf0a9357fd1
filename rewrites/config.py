"""Typed options of calibration and conversion, validated in one place."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ground.errors import Ann2SnnError


# Measured on the bundled example (docs/accuracy.md): at T <= 32 the 99th percentile loses less than 99.9
# (seed 001's RobustNorm), on the committed test split and on 4,000 further test images alike.
DEFAULT_PERCENTILE = 99.0
DEFAULT_NORM = f"percentile:{DEFAULT_PERCENTILE:g}"


class Neuron(enum.Enum):
    """Which neuron a ReLU becomes. IF: integrate-and-fire with soft reset, positive spikes only. SIGNED: the
    two-type (positive and negative spike) IF neuron of seed 000 (QFFS, SpikeZIP-TF's ST-BIF), whose net spike
    count is kept in [0, tmax] and which takes back spikes fired too early."""

    IF = "if"
    SIGNED = "signed"

    @classmethod
    def parse(cls, text: str) -> Neuron:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise Ann2SnnError(f"invalid --neuron {text!r}", "use 'if' or 'signed'") from None


class Nonlinear(enum.Enum):
    """How nonlinearities other than ReLU and MaxPool convert. UGO: subnets of IF neurons (seed 002), nothing
    floating-point left. EXACT: the float operator applied to the running mean of its input, corrected so
    that the output's running mean is f(mean) (the accuracy ceiling UGO is measured against)."""

    UGO = "ugo"
    EXACT = "exact"

    @classmethod
    def parse(cls, text: str) -> Nonlinear:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise Ann2SnnError(f"invalid --nonlinear {text!r}", "use 'ugo' or 'exact'") from None


class Coding(enum.Enum):
    """How values travel between layers. DIRECT: rate coding, the analog input at every step and each
    neuron's spike count over T carrying its value (decoded by the running mean). FS: few-spikes coding (seed
    003), each neuron sends its value in at most K weighted spikes after the layers before it have finished
    (decoded by the sum)."""

    DIRECT = "direct"
    FS = "fs"

    @classmethod
    def parse(cls, text: str) -> Coding:
        name = text.strip().lower()
        if name == "rate":
            return cls.DIRECT
        try:
            return cls(name)
        except ValueError:
            raise Ann2SnnError(f"invalid --coding {text!r}", "use 'rate' or 'fs'") from None


MAX_FS_K = 24  # float32 holds 2^-24 relative steps exactly
# within 0.5 point of the ANN at 1.4-1.5 spikes per neuron on two CNNs; the reference uses 10 (docs/fs.md)
FS_DEFAULT_K = 8


class Norm(enum.Enum):
    MAX = "max"
    PERCENTILE = "percentile"
    MMSE = "mmse"


@dataclass(frozen=True)
class NormSpec:
    """How a neuron's threshold is read from the calibrated statistics of its input."""

    kind: Norm = Norm.PERCENTILE
    percentile: float = DEFAULT_PERCENTILE

    @classmethod
    def parse(cls, text: str) -> NormSpec:
        """Parse 'max', 'mmse', 'percentile' or 'percentile:99.99'."""
        name, _, value = text.strip().lower().partition(":")
        if name == "max" and not value:
            return cls(Norm.MAX, 100.0)
        if name == "mmse" and not value:
            return cls(Norm.MMSE, 100.0)
        if name == "percentile":
            try:
                q = float(value) if value else DEFAULT_PERCENTILE
            except ValueError:
                q = -1.0
            if 0.0 < q <= 100.0:
                return cls(Norm.PERCENTILE, q)
        raise Ann2SnnError(f"invalid --norm {text!r}", "use 'max', 'mmse' or 'percentile:Q' with 0 < Q <= 100")

    def __str__(self) -> str:
        return f"percentile:{self.percentile:g}" if self.kind is Norm.PERCENTILE else self.kind.value


@dataclass(frozen=True)
class LayerSetting:
    """One ReLU layer's conversion where it departs from the options: chosen per layer by `convert` on the
    calibration data (ann2snn/tune.py)."""

    neuron: Neuron
    norm: NormSpec
    per_channel: bool
    phi: float

    def to_json(self) -> dict:
        return {"neuron": self.neuron.value, "norm": str(self.norm), "per_channel": self.per_channel, "phi": self.phi}


@dataclass(frozen=True)
class ConvertOptions:
    norm: NormSpec = field(default_factory=NormSpec)
    phi: float = 0.5
    default_T: int = 32
    skip_passes: tuple[str, ...] = ()
    neuron: Neuron = Neuron.IF
    tmax: int | None = None  # SIGNED only: the most net spikes a neuron may hold; None: default_T
    weight_norm: bool = False  # fold thresholds into the weights (unit spikes, thresholds 1) where exact
    per_channel: bool = False  # one threshold per channel (axis 1) from channel-wise calibration statistics
    nonlinear: Nonlinear = Nonlinear.UGO
    ugo_size: int | None = None  # hidden neurons per UGO; None: STA's size for the function
    allow_float: tuple[str, ...] = ()  # op types kept as exact float operators when nothing else maps them
    drain_steps: int = 0  # E: the drain steps the file is converted for (metadata ann2snn.drain_steps)
    layer_settings: dict[str, LayerSetting] = field(default_factory=dict)  # by ReLU node name
    coding: Coding = Coding.DIRECT
    fs_K: int = FS_DEFAULT_K  # FS: firing steps per neuron (K)
    fs_overlap: int = 0  # FS: steps a layer starts firing before its input is final (0: none; at most K - 1)

    @property
    def fs(self) -> bool:
        return self.coding is Coding.FS

    def setting(self, node: str) -> LayerSetting:
        """The conversion of ReLU layer `node`: its own setting, else the options'."""
        return self.layer_settings.get(node) or LayerSetting(self.neuron, self.norm, self.per_channel, self.phi)

    @property
    def effective_tmax(self) -> int:
        """The signed neuron's spike budget: tmax, or the conversion's T when tmax is not given."""
        return self.tmax if self.tmax is not None else self.default_T

    def __post_init__(self):
        if not 0.0 <= self.phi < 1.0:
            raise Ann2SnnError(f"invalid --phi {self.phi}", "the initial membrane fraction must be in [0, 1)")
        if self.default_T < 1:
            raise Ann2SnnError(f"invalid T {self.default_T}", "T must be at least 1")
        if not isinstance(self.neuron, Neuron):
            raise Ann2SnnError(f"invalid --neuron {self.neuron!r}", "use 'if' or 'signed'")
        if self.drain_steps < 0:
            raise Ann2SnnError(f"invalid --drain-steps {self.drain_steps}", "use 0 or more drain steps")
        if not 1 <= self.fs_K <= MAX_FS_K:
            raise Ann2SnnError(f"invalid --K {self.fs_K}", f"use 1 to {MAX_FS_K} firing steps per neuron")
        if not 0 <= self.fs_overlap < self.fs_K:
            raise Ann2SnnError(f"invalid --overlap {self.fs_overlap} for --K {self.fs_K}",
                               "a layer may start at most K - 1 steps before its input is final")
        if self.ugo_size is not None and self.ugo_size < 1:
            raise Ann2SnnError(f"invalid --ugo-size {self.ugo_size}", "use at least 1 hidden neuron")
        if self.tmax is not None:
            if self.neuron is not Neuron.SIGNED:
                raise Ann2SnnError(f"--tmax {self.tmax} given for --neuron {self.neuron.value}",
                                   "--tmax only applies to --neuron signed")
            if self.tmax < 1:
                raise Ann2SnnError(f"invalid --tmax {self.tmax}", "the spike budget must be at least 1")
