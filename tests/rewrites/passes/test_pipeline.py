"""The pipeline: the order the passes depend on, and a pass that breaks reported with its name and the
passes before it."""
import pytest

from builders import small_cnn
from ground.errors import DataError, PassError
from rewrites.convert import import_graph
from rewrites.passes import DEFAULT_PIPELINE, NORMALISE, PASSES, SPIKING, Pass, PassContext, PassReport, run_passes


def position(name: str) -> int:
    return [p.name for p in DEFAULT_PIPELINE].index(name)


@pytest.mark.parametrize("before, after", [
    ("fold_constants", "max_to_relu"),  # max_to_relu reads the zero as a constant
    ("hard_activations", "batch_shapes"),  # batch_shapes gives the new tensors their shapes
    ("fold_constants", "batch_shapes"),
    ("fuse_softmax", "canonical_products"),  # canonical_products would rewrite the softmax's Div
    ("qcfs_to_if", "relu_to_if"),  # a QCFS chain holds a ReLU-like Clip
    ("nonlinear_to_spiking", "relu_to_if"),  # a ReLU-like node inside a function is part of it
    ("relu_to_if", "weight_norm"),  # weight_norm reads the neurons' thresholds
    ("maxpool_to_neuron", "weight_norm"),
])
def test_the_order_the_passes_rely_on(before, after):
    assert position(before) < position(after)


def test_normalising_passes_come_first_and_the_head_leads_the_spiking_ones():
    assert not any(p.spiking for p in NORMALISE) and all(p.spiking for p in SPIKING)
    assert SPIKING[0].name == "decoded_head" and DEFAULT_PIPELINE == NORMALISE + SPIKING
    assert len(PASSES) == len(DEFAULT_PIPELINE) and all(p.doc for p in DEFAULT_PIPELINE)


def broken(graph, ctx):
    raise KeyError("a tensor the pass expected")


def test_a_pass_that_breaks_is_named_with_the_passes_before_it():
    fine = Pass("fine", lambda graph, ctx: PassReport("fine"))
    with pytest.raises(PassError, match=r"pass 'broken' failed: KeyError: .*\(passes before it: fine\)") as caught:
        run_passes(import_graph(small_cnn()), (fine, Pass("broken", broken)), PassContext())
    assert "--skip-pass" in caught.value.hint


def test_a_pass_that_refuses_bad_input_keeps_its_own_error():
    def refusing(graph, ctx):
        raise DataError("tensor 'x' is wrong", "fix it")
    with pytest.raises(DataError, match="tensor 'x' is wrong"):
        run_passes(import_graph(small_cnn()), (Pass("refusing", refusing),), PassContext())
