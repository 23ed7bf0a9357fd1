"""The bundled ViT (examples/fmnist_vit/model.onnx) through SpikingJelly 2.0's transformer recipes: accuracy at
T = 8, 16, 32, 64 beside the ANN's, on the first --limit images of examples/fmnist_cnn/test.npz.

SpikingJelly is a benchmark-only dependency, like torch: without them this script says why and exits 0.

What it does:
1. Rebuilds the network in torch: FmnistViT of examples/make_vit_example.py with the ONNX file's initializers.
   torch.onnx.export kept the state_dict names for the biases, LayerNorms, conv, pos and head, but stored each
   Linear weight transposed under an anonymous name (onnx::MatMul_NNN); each is matched to its module through
   the Add that follows its MatMul, whose other input is the named bias. Checked against onnxruntime (max
   |logit diff|, printed).
2. Converts it with each SpikingJelly transformer recipe (ann2snn.recipes): TransformerTDEquivalentRecipe and
   STATransformerRecipe (modes "equivalent" and "spiking_encoder", calibrated on examples/fmnist_cnn/calib.npz;
   time_steps = T, converted once per T since STA's thresholds depend on it). Both recipes use SpikingJelly's
   cumulative-difference coding, as in their bundled examples (bert_sst2_transformer_td_equivalent.py,
   imagenet_vit_sta.py): set_step_mode(net, "m"), reset_net(net) before every batch, the image at step 1 and
   zeros after, and the prediction at t is the argmax of the sum of the outputs of steps 1..t.
3. Where a recipe rejects or mishandles the ViT as it stands, the table says so, and a variant with the
   smallest change that lets the recipe run is measured beside it, labelled as such:
   - "TD, pos first step only": the TD recipe leaves the learned position embedding (an FX get_attr) as a
     constant added at every step, which cumulative-difference coding counts t times; the variant feeds it
     at step 1 only, through STA's own _STAConstant (what STATransformerRecipe does to tensor constants).
   - "STA ..., nn.MultiheadAttention": STA accepts attention only as nn.MultiheadAttention; the variant packs
     each block's q, k, v, proj Linears into one (the same function: batch_first, scale head_dim^-0.5).

usage: python benchmarks/bench_spikingjelly_vit.py [--limit 500] [--T 8,16,32,64] [--batch 100] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spikingjelly import import_spikingjelly, log  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "examples" / "fmnist_vit" / "model.onnx"
CALIB = REPO / "examples" / "fmnist_cnn" / "calib.npz"
TEST = REPO / "examples" / "fmnist_cnn" / "test.npz"


def torch_vit(torch):
    """FmnistViT with the initializers of model.onnx (see the module docstring for the weight names)."""
    sys.path.insert(0, str(REPO / "examples"))  # make_vit_example imports make_example
    spec = importlib.util.spec_from_file_location("make_vit_example", REPO / "examples" / "make_vit_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = onnx.load(MODEL).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {k: v for k, v in init.items() if not k.startswith("onnx::")}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in init and node.input[1].startswith("onnx::"):
            (add,) = [c for c in consumers[node.output[0]] if c.op_type == "Add"]
            (bias,) = [i for i in add.input if i in init]
            weights[bias[:-len("bias")] + "weight"] = init[node.input[1]].T
    net = module.FmnistViT()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=True)
    return module, net.eval()


def check_ann(torch, net, x: np.ndarray, y: np.ndarray) -> dict:
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    a = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        b = net(torch.from_numpy(x)).numpy()
    return {"max_abs_diff": float(np.abs(a - b).max()), "onnxruntime_accuracy": float(np.mean(a.argmax(1) == y)),
            "torch_accuracy": float(np.mean(b.argmax(1) == y))}


def with_mha(torch, net):
    """A copy of `net` whose attention is nn.MultiheadAttention holding the same q, k, v, proj weights."""
    nn = torch.nn

    class MHA(nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.mha = nn.MultiheadAttention(attn.dim, attn.heads, batch_first=True)
            with torch.no_grad():
                self.mha.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
                self.mha.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
                self.mha.out_proj.weight.copy_(attn.proj.weight)
                self.mha.out_proj.bias.copy_(attn.proj.bias)

        def forward(self, x):
            out, _ = self.mha(x, x, x, need_weights=False)  # unpacked as torchvision does: STA accepts only this
            return out

    out = copy.deepcopy(net)
    for block in out.blocks:
        block.attn = MHA(block.attn)
    return out.eval()


def pos_first_step(torch, snn, T: int):
    """The TD graph with its `pos` get_attr replaced by STA's first-step-only constant."""
    from spikingjelly.activation_based.ann2snn.recipes.sta_transformer import _STAConstant
    graph = snn.graph
    for node in list(graph.nodes):
        if node.op == "get_attr" and node.target == "pos":
            snn.add_submodule("pos_first_step", _STAConstant(snn.pos, T))
            with graph.inserting_after(node):
                new = graph.call_module("pos_first_step", args=())
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    graph.lint()
    snn.recompile()
    return snn


def sj_accuracy(sj, snn, x: np.ndarray, y: np.ndarray, T: int, batch: int) -> list[float]:
    """Accuracy of the summed outputs of steps 1..t, t = 1..T; image at step 1, zeros after."""
    torch, _, functional = sj
    functional.set_step_mode(snn, "m")
    snn.eval()
    correct = np.zeros(T)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            functional.reset_net(snn)
            xb = torch.from_numpy(x[i:i + batch])
            seq = torch.zeros((T, *xb.shape), dtype=xb.dtype)
            seq[0] = xb
            out = snn(seq).cumsum(0).numpy()
            correct += (out.argmax(-1) == y[i:i + batch]).sum(1)
    return (correct / len(x)).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--T", default="8,16,32,64")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args()
    sj = import_spikingjelly(("TransformerTDEquivalentRecipe", "STATransformerRecipe"))
    if isinstance(sj, str):
        print(f"skipped: {sj}")
        return 0
    torch, ann2snn, _ = sj
    Ts = [int(t) for t in args.T.split(",")]
    test = np.load(TEST)
    x, y = test["x"][:args.limit].astype(np.float32), test["y"][:args.limit]
    calib_x = np.load(CALIB)["x"].astype(np.float32)
    loader = [(torch.from_numpy(calib_x[i:i + args.batch]),) for i in range(0, len(calib_x), args.batch)]
    _, net = torch_vit(torch)
    check = check_ann(torch, net, x, y)
    print(f"torch ViT vs onnxruntime on {len(x)} images: max |logit diff| {check['max_abs_diff']:.3g}, "
          f"accuracy {100 * check['torch_accuracy']:.2f}% (onnxruntime {100 * check['onnxruntime_accuracy']:.2f}%)")
    mha_net = with_mha(torch, net)
    with torch.no_grad():
        mha_diff = float((mha_net(torch.from_numpy(x)) - net(torch.from_numpy(x))).abs().max())
    print(f"nn.MultiheadAttention variant vs ViT: max |logit diff| {mha_diff:.3g}")

    def td(T, fix=False):
        snn = ann2snn.Converter(ann2snn.TransformerTDEquivalentRecipe(time_steps=T), device="cpu").convert(
            copy.deepcopy(net))
        return pos_first_step(torch, snn, T) if fix else snn

    def sta(model, mode):
        return lambda T: ann2snn.Converter(ann2snn.STATransformerRecipe(dataloader=loader, time_steps=T, mode=mode),
                                           device="cpu").convert(copy.deepcopy(model))

    configs = {
        "TD-equivalent": td,
        "TD-equivalent, pos first step only": lambda T: td(T, fix=True),
        "STA equivalent": sta(net, "equivalent"),
        "STA spiking_encoder": sta(net, "spiking_encoder"),
        "STA equivalent, nn.MultiheadAttention": sta(mha_net, "equivalent"),
        "STA spiking_encoder, nn.MultiheadAttention": sta(mha_net, "spiking_encoder"),
    }
    results = {"versions": {"torch": torch.__version__, "spikingjelly": importlib.metadata.version("spikingjelly")},
               "limit": len(x), "T": Ts, "ann": check, "mha_variant_max_abs_diff": mha_diff, "configs": {}}
    for label, make in configs.items():
        row: dict = {}
        for T in Ts:
            t0 = time.perf_counter()
            try:
                snn = make(T)
            except Exception as exc:  # record why the recipe refused, keep going
                row = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{label}: " + "".join(traceback.format_exception_only(exc)).strip())
                break
            curve = sj_accuracy(sj, snn, x, y, T, args.batch)
            row[T] = {"at_T": curve[-1], "curve": curve, "seconds": time.perf_counter() - t0}
            log(f"{label} T={T}: {100 * curve[-1]:.2f}% ({time.perf_counter() - t0:.1f} s)")
        results["configs"][label] = row

    print(f"\n{len(x)} test images, ANN accuracy {100 * check['torch_accuracy']:.2f}%\n")
    print("| SpikingJelly recipe | " + " | ".join(f"T = {T}" for T in Ts) + " |")
    print("|---|" + "---|" * len(Ts))
    for label, row in results["configs"].items():
        cells = [row["error"]] + [""] * (len(Ts) - 1) if "error" in row else \
            [f"{100 * row[T]['at_T']:.2f}" for T in Ts]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
