"""The rewrite passes and the default pipeline: one explicit ordered tuple, no discovery."""
from rewrites.passes import (allow_float, batch_shapes, canonical_products, decoded_head, decompose_l2, decompose_layernorm,
                             eliminate_identity, fold_batchnorm, fs_schedule, hard_activations, fold_constants, fuse_softmax,
                             max_to_neuron, max_to_relu, relu_to_fs,
                             maxpool_to_neuron, name_nodes,
                             nonlinear_to_spiking, products_to_spiking, qcfs_to_if, relu_to_if,
                             softmax_to_spiking, weight_norm)
from rewrites.optable import classify_graph, Conversion, NodeConversion
from rewrites.passes.base import Pass, PassContext, PassReport, run_passes

NORMALISE: tuple[Pass, ...] = (
    name_nodes.PASS,
    eliminate_identity.PASS,
    fold_constants.PASS,
    max_to_relu.PASS,  # after fold_constants: its zero is a constant then
    hard_activations.PASS,  # before batch_shapes, which gives its new tensors their shapes
    batch_shapes.PASS,  # after fold_constants: what folds needs no probe run
    fold_batchnorm.PASS,
    fuse_softmax.PASS,  # before canonical_products rewrites its Div
    decompose_layernorm.PASS,
    decompose_l2.PASS,  # before canonical_products rewrites the Div of an L2 normalisation
    canonical_products.PASS,
)
SPIKING: tuple[Pass, ...] = (
    decoded_head.PASS,  # first: a head on the way to an output is exact, whatever else would map it
    softmax_to_spiking.PASS,  # its Exp and Reciprocal are then elementwise functions like any other
    qcfs_to_if.PASS,  # before relu_to_if: a QCFS chain holds a ReLU-like Clip
    nonlinear_to_spiking.PASS,  # before relu_to_if: a ReLU-like node inside a function is part of it
    relu_to_if.PASS,
    maxpool_to_neuron.PASS,
    max_to_neuron.PASS,
    products_to_spiking.PASS,
    allow_float.PASS,
    weight_norm.PASS,  # does nothing unless options.weight_norm
)
# --coding fs: ReLUs become few-spikes neurons, other elementwise functions fitted ones, float operators and
# products read running sums; no QCFS or weight-norm pass (rewrites/fs.py)
SPIKING_FS: tuple[Pass, ...] = (
    decoded_head.PASS,
    softmax_to_spiking.PASS,
    products_to_spiking.PASS,  # first: x * sigmoid(x) is a product of sums and a fitted sigmoid
    relu_to_fs.PASS,  # before nonlinear_to_spiking: a clip is the exact ReLU neuron, not a fitted one
    nonlinear_to_spiking.PASS,
    maxpool_to_neuron.PASS,
    max_to_neuron.PASS,
    allow_float.PASS,
    fs_schedule.PASS,  # last: every neuron in place
)
DEFAULT_PIPELINE: tuple[Pass, ...] = NORMALISE + SPIKING
PASSES: dict[str, Pass] = {p.name: p for p in DEFAULT_PIPELINE}
CLAIMS = tuple(p.claims for p in DEFAULT_PIPELINE if p.claims is not None)  # no node is claimed twice (tested)
NORMALISING_CLAIMS = tuple(p.claims for p in NORMALISE if p.claims is not None)

KEPT = frozenset({Conversion.LINEAR, Conversion.STATIC, Conversion.SPIKING})  # no pass needed


def verdicts(graph, kept_float: frozenset[str] = frozenset()) -> list[NodeConversion]:
    """How each node of the graph converts (`inspect`'s op table): kept, or the verdict of the pass that
    claims it."""
    return classify_graph(graph, CLAIMS, kept_float, NORMALISING_CLAIMS)


def converting_pass(conversion: Conversion) -> Pass | None:
    """The pass that carries out an `inspect` verdict; None where the node is kept as it is (or, unsupported,
    by nothing)."""
    return next((p for p in DEFAULT_PIPELINE if conversion in p.converts), None)


def observed_tensors(graph) -> list[str]:
    """The calibration plan: every tensor of the normalised graph that a spiking pass needs statistics of,
    each once: those of the graph in graph order (so `calibrate`'s table reads down the network), then those
    calibration adds to it (a Softmax's log-sum-exp) in pipeline order."""
    found = verdicts(graph)
    names: dict[str, None] = {}
    for p in SPIKING:
        if p.observes is not None:
            names.update(dict.fromkeys(p.observes(graph, found)))
    position = {t.name: -1 for t in graph.inputs}
    for i, node in enumerate(graph.nodes):
        position.update((t.name, i) for t in node.outputs)
    return sorted(names, key=lambda name: position.get(name, len(graph.nodes)))


def pass_list_markdown() -> str:
    """docs/cli.md's table of the pipeline (a test checks that the page holds it as written here)."""
    rows = ["| # | pass | kind | what it does | carries out (`inspect`) | calibrated |", "|---|---|---|---|---|---|"]
    for i, p in enumerate(DEFAULT_PIPELINE, 1):
        verdicts = "; ".join(sorted(c.value for c in p.converts))
        doc = p.doc.replace("|", "\\|")
        rows.append(f"| {i} | `{p.name}` | {'spiking' if p.spiking else 'normalising'} | {doc} | {verdicts} "
                    f"| {'yes' if p.observes else ''} |")
    return "\n".join(rows)


__all__ = ["NORMALISE", "SPIKING", "SPIKING_FS", "DEFAULT_PIPELINE", "PASSES", "KEPT", "CLAIMS", "Pass", "PassContext",
           "PassReport", "converting_pass", "observed_tensors", "pass_list_markdown", "run_passes", "verdicts"]
