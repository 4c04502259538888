"""Benchmark: joint pruning + quantization (--wbits) against the public reference code, on a whole model.

Issue 23's fidelity goal: IST-DASLab/sparsegpt with `--wbits 4` (per channel, asymmetric) at 50% and at
sparsity 0 (its GPTQ), against zprune's SparseGPT with `--wbits 4 --group-size 0 --asym`, within 2% in
wikitext-2 perplexity. The protocol of the other fidelity checks: SmolLM2-135M, calibration C4 32 x 512
(seed 0, the shared C4 shard), pruned propagation, the first 40 wikitext-2 test windows of 512 tokens.

Both sides see the same calibration windows (zprune draws them; the reference is handed them) and are
measured by the same perplexity code, so only the pruning differs. The reference side is its own
`llama.py` sequential loop (every linear of a block pruned from the block's inputs, the block's outputs
recomputed after pruning) around its `SparseGPT` and `Quantizer` classes, imported from a checkout given
with --reference (read, not copied into this repository):

    python tests/benchmarks/bench_fidelity_quant.py --reference <sparsegpt checkout> --cells 0.5:4,0:4
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

from _bench import DATA_DIR, fidelity_arguments, library_state, record, sides_table  # noqa: E402,F401  (sets offline env first)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from zprune_cli.base.settings import Calibration, Settings  # noqa: E402
from zprune_cli.data.sources import resolve_source  # noqa: E402
from zprune_cli.engine.pipeline import DenseSnapshot, prune_in_memory  # noqa: E402
from zprune_cli.engine.recipe import PruneRecipe  # noqa: E402
from zprune_cli.evaluation.run import EvalPlan, Evaluation, measure  # noqa: E402
from zprune_cli.methods import quantize  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.verbs.calibration import calibrate, drawn_windows  # noqa: E402
from zprune_cli.base.progress import ensure  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    fidelity_arguments(p, "a checkout of IST-DASLab/sparsegpt (sparsegpt.py, quant.py)")
    p.add_argument("--cells", default="0.5:4,0:4", help="SPARSITY:BITS, comma-separated")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--sides", default="reference,zprune,zprune-f32", help="comma-separated: reference, reference-f64 "
                   "(its Hessian summed in float64), zprune, zprune-f32 (zprune with the reference's float32 scales "
                   "instead of its bfloat16-rounded ones)")
    return p.parse_args(argv)


def reference_classes(folder: Path):
    sys.path.insert(0, str(folder))
    torch.cuda.synchronize = lambda *a, **k: None  # the reference calls it unconditionally; this is a CPU run
    return importlib.import_module("sparsegpt").SparseGPT, importlib.import_module("quant").Quantizer


def block_inputs(model, windows: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """Every window's input to block 0 and the keyword arguments the model hands its blocks (llama.py's Catcher)."""
    layers, seen = model.model.layers, {"inputs": [], "kwargs": None}

    class Catcher(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, hidden, *args, **kwargs):
            seen["inputs"].append(hidden)
            seen["kwargs"] = kwargs
            raise ValueError  # stop the forward pass here

    layers[0] = Catcher(layers[0])
    for window in windows:
        try:
            model(window.unsqueeze(0))
        except ValueError:
            pass
    layers[0] = layers[0].block
    return seen["inputs"], seen["kwargs"]


def run_block(block, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.inference_mode()  # the loaded weights are inference tensors
def reference_prune(model, windows: torch.Tensor, sparsity: float, wbits: int, SparseGPT, Quantizer,
                    hessian64: bool = False) -> float:
    """llama.py's `llama_sequential`: per block, the Hessians of all its linears from the block's inputs, each
    linear pruned (and quantized) by fasterprune, then the block's outputs recomputed as the next inputs.
    `hessian64`: the same Hessian, 2/N sum of x x^T over the N windows, summed in float64 here (the reference
    keeps a running float32 average) and handed to fasterprune in float32: how far its own result moves with
    the rounding of that sum."""
    started = time.perf_counter()
    inputs, kwargs = block_inputs(model, windows)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values", "use_cache")}
    for block in model.model.layers:
        linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        gpts = {}
        for name, linear in linears.items():
            gpts[name] = SparseGPT(linear)
            gpts[name].quantizer = Quantizer()
            gpts[name].quantizer.configure(wbits, perchannel=True, sym=False, mse=False)
        sums = {n: 0.0 for n in linears}

        def add(n, x, o):
            if hessian64:
                sums[n] = sums[n] + _outer64(x)
            else:
                gpts[n].add_batch(x, o)

        hooks = [linears[n].register_forward_hook(lambda m, i, o, n=n: add(n, i[0].data, o.data)) for n in linears]
        for hidden in inputs:
            run_block(block, hidden, kwargs)
        for hook in hooks:
            hook.remove()
        if hessian64:
            for name in linears:
                gpts[name].H, gpts[name].nsamples = (sums[name] * (2 / len(inputs))).float(), len(inputs)
        for name in linears:
            gpts[name].fasterprune(sparsity, prunen=0, prunem=0, percdamp=0.01, blocksize=128)
            gpts[name].free()
        inputs = [run_block(block, hidden, kwargs) for hidden in inputs]
    return time.perf_counter() - started


def _outer64(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).double()
    return flat.T @ flat


def zprune_prune(model, entry, sparsity: float, wbits: int, float32_scales: bool) -> float:
    """zprune's SparseGPT with --wbits, per channel, asymmetric. Its grids' scales are rounded up to bfloat16 (what
    compressed-tensors stores); `float32_scales` keeps them as the reference does, to tell that rounding apart."""
    recipe = PruneRecipe("sparsegpt", sparsity=sparsity, wbits=wbits, group_size=0, sym=False, propagate="pruned")
    shipped = quantize.bf16_ceil
    quantize.bf16_ceil = (lambda x: x) if float32_scales else shipped
    try:
        return prune_in_memory(model, entry, recipe).seconds
    finally:
        quantize.bf16_ceil = shipped


def run(args: argparse.Namespace) -> list[dict]:
    SparseGPT, Quantizer = reference_classes(args.reference)
    cache = Path(tempfile.mkdtemp(prefix="zprune-bench-fidelity-quant-"))
    handle = ModelHandle(args.model, "cpu", "float32")
    calibration = Calibration(args.data, args.nsamples, args.seqlen, 0)
    windows = drawn_windows(handle, resolve_source(args.data, "train", DATA_DIR), calibration, ensure(None))
    plan = EvalPlan(Evaluation(data="wikitext2", seqlen=512, max_windows=args.eval_windows), DATA_DIR)
    snapshot, library, cells = DenseSnapshot(handle.model), library_state(), []
    for cell in args.cells.split(","):
        sparsity, wbits = float(cell.split(":")[0]), int(cell.split(":")[1])
        for side in args.sides.split(","):
            snapshot.restore()
            if side in ("reference", "reference-f64"):
                seconds = reference_prune(handle.model, windows, sparsity, wbits, SparseGPT, Quantizer, side == "reference-f64")
            else:  # each side its own cache: the propagated statistics depend on the grids, and are stored
                entry = calibrate(handle, calibration, gram=True, settings=Settings(cache_dir=cache / f"{cell}-{side}",
                                                                                    data_dir=DATA_DIR, device="cpu")).entry
                seconds = zprune_prune(handle.model, entry, sparsity, wbits, float32_scales=side == "zprune-f32")
            metrics = {m.name: m.value for m in measure(handle.model, handle.tokenizer, plan)}
            row = {"cell": cell, "side": side, "ppl": round(metrics["ppl:wikitext2"], 4), "sparsity": metrics["sparsity"],
                   "prune_seconds": round(seconds, 1), "threads": torch.get_num_threads(), "library": library}
            cells.append(row)
            record(row, args.out)
    return cells


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    print("\n" + sides_table(rows, "cell", "sparsity : bits"))


if __name__ == "__main__":
    main()
