"""The rewrite passes and the default pipeline: one explicit ordered tuple, no discovery."""
from rewrites.passes import (eliminate_identity, fold_batchnorm, fold_constants, maxpool_to_neuron,
                             name_nodes, qcfs_to_if, relu_to_if, weight_norm)
from rewrites.passes.base import Pass, PassContext, PassReport, run_passes

NORMALISE: tuple[Pass, ...] = (
    name_nodes.PASS,
    eliminate_identity.PASS,
    fold_constants.PASS,
    fold_batchnorm.PASS,
)
SPIKING: tuple[Pass, ...] = (
    qcfs_to_if.PASS,  # before relu_to_if: a QCFS chain holds a ReLU-like Clip
    relu_to_if.PASS,
    maxpool_to_neuron.PASS,
    weight_norm.PASS,  # does nothing unless options.weight_norm
)
DEFAULT_PIPELINE: tuple[Pass, ...] = NORMALISE + SPIKING
PASSES: dict[str, Pass] = {p.name: p for p in DEFAULT_PIPELINE}

__all__ = ["NORMALISE", "SPIKING", "DEFAULT_PIPELINE", "PASSES", "Pass", "PassContext", "PassReport",
           "run_passes"]
