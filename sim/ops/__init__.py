"""NumPy kernels for standard ONNX operators (default domain, opset 11-21 semantics), by op type in KERNELS.
Importing the package registers every kernel: elementwise, linear (matrix products, convolutions, pooling),
reductions (and the normalisations over axes) and shapes."""
from sim.ops import elementwise, linear, reductions, shapes  # noqa: F401  (each registers its kernels)
from sim.ops.elementwise import erf
from sim.ops.reductions import softmax_axes
from sim.ops.registry import KERNELS, Kernel, attributes, axes_from

__all__ = ["KERNELS", "Kernel", "attributes", "axes_from", "erf", "softmax_axes"]
