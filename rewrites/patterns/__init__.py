"""Subgraph patterns the passes, the calibration plan and the op table all read: QCFS chains, elementwise
regions of one signal, softmax axes, and facts about single tensors. Patterns import no pass."""
