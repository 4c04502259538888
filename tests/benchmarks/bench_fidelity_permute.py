"""Benchmark: RIA 2:4 with channel permutation (--permute) against RIA's public reference code, on a whole model.

Issue 22's fidelity goal: `ria --pattern 2:4 --permute heuristic` and `--permute lsa` within 2% of RIA's code
(`--reallocation`, `--reallocation --lsa`) in wikitext-2 perplexity. The protocol of the other fidelity checks:
SmolLM2-135M in float32, calibration C4 32 x 512 (seed 0, the shared C4 shard), pruned propagation, the first 40
wikitext-2 test windows of 512 tokens. `none` (no permutation) is the baseline both sides share.

Both sides see the same calibration windows (zprune draws them; the reference's loader is replaced by one that
returns them) and are measured by the same perplexity code. The reference side is its own `prune_ria` (lib/prune.py
of biomedical-cybernetics/Relative-importance-and-activation-pruning), loaded from a checkout given with
--reference (read, never copied into this repository) with the shims a CPU and transformers 5 need:
- its LSA device, hard-coded "cuda:7", is replaced by "cpu" in the source it is loaded from;
- its model checks look for "llama" in the model's name: the name handed to it says llama;
- its blocks are called without `position_embeddings` (transformers 5 needs them): each decoder layer's forward
  computes them from the model's rotary embedding when missing.
Its full LSA (no `--fast`) is estimated at about 80 minutes on this CPU, one core (one SmolLM2-shaped
block took 167 s).

    python tests/benchmarks/bench_fidelity_permute.py --reference <RIA checkout> --sides none,heuristic,lsa
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import types
from pathlib import Path

from _bench import DATA_DIR, fidelity_arguments, library_state, record, sides_table  # noqa: E402  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.base.progress import ensure  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402
from zprune_cli.data.sources import resolve_source  # noqa: E402
from zprune_cli.engine import permuted  # noqa: E402
from zprune_cli.engine.pipeline import DenseSnapshot, prune_in_memory  # noqa: E402
from zprune_cli.engine.recipe import PruneRecipe  # noqa: E402
from zprune_cli.evaluation.run import EvalPlan, Evaluation, measure  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.verbs.calibration import calibrate, drawn_windows  # noqa: E402

SIDES = ("reference", "reference-f64", "zprune", "zprune-free", "zprune-mapped")
FLAGS = {"none": (False, False), "heuristic": (True, False), "lsa": (True, True)}  # --reallocation, --lsa


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    fidelity_arguments(p, "a checkout of RIA's code (lib/prune.py)")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--permute", default="none,heuristic", help="comma-separated: none, heuristic, lsa")
    p.add_argument("--sides", default="reference,zprune", help="comma-separated: reference, reference-f64 (its "
                   "activation norms summed in float64 by the harness, not its float32 running mean), zprune, "
                   "zprune-free (--permute-layout free), zprune-mapped (no layer's permutation absorbed: every mask "
                   "mapped back, as RIA's code does)")
    p.add_argument("--seed", type=int, default=0, help="calibration seed (which C4 windows are drawn)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--table", type=Path, nargs="+", default=None, metavar="JSONL",
                   help="print the table of finished cells (--out files of several runs: seeds side by side) and exit")
    return p.parse_args(argv)


def reference_module(folder: Path):
    """RIA's lib/prune.py, its LSA moved from "cuda:7" to the CPU (the only change to its source)."""
    sys.path.insert(0, str(folder))
    import lib  # noqa: F401  (its package: data, layerwrapper, sparsegpt, quant)

    source = (folder / "lib" / "prune.py").read_text()
    assert source.count('permutation_device = "cuda:7"') == 1, "not the reference revision this harness knows"
    module = types.ModuleType("lib.prune")
    module.__package__, module.__file__ = "lib", str(folder / "lib" / "prune.py")
    sys.modules["lib.prune"] = module
    exec(compile(source.replace('permutation_device = "cuda:7"', 'permutation_device = "cpu"'), module.__file__, "exec"),
         module.__dict__)
    return module


def with_rotary(model) -> None:
    """Decoder layers compute their position embeddings when called without them (as the reference calls them)."""
    layer_class = type(model.model.layers[0])
    forward, rotary = layer_class.forward, model.model.rotary_emb

    def patched(self, hidden_states, *args, position_embeddings=None, position_ids=None, **kwargs):
        if position_embeddings is None:
            position_embeddings = rotary(hidden_states, position_ids)
        return forward(self, hidden_states, *args, position_ids=position_ids, position_embeddings=position_embeddings, **kwargs)

    layer_class.forward = patched


def float64_norms(reference) -> type:
    """The reference's WrappedGPT with each input's squared norms summed in float64 (its own code keeps a float32
    running mean): handed to prune_ria in its place, to measure how far the rounding of that sum alone moves its
    result. The heuristic's global sort of column sums turns such rounding into different permutations."""
    class Float64Norms(reference.WrappedGPT):
        def add_batch(self, inp, out):
            x = inp.reshape(-1, inp.shape[-1]).double()  # [tokens, in]
            self.sum64 = getattr(self, "sum64", 0) + x.square().sum(0)
            self.count64 = getattr(self, "count64", 0) + (inp.shape[0] if inp.dim() == 3 else 1)
            self.scaler_row = (self.sum64 / self.count64).float()

    return Float64Norms


def reference_prune(reference, model, windows: torch.Tensor, pattern: str, permute: str, nsamples: int, seqlen: int,
                    norms64: bool = False) -> float:
    """RIA's prune_ria on `model`, calibrated on `windows` [nsamples, seqlen] (`norms64`: see float64_norms)."""
    n, m = (int(v) for v in pattern.split(":"))
    reallocation, lsa = FLAGS[permute]
    args = argparse.Namespace(model="llama (SmolLM2)", calib_dataset="c4", nsamples=nsamples, seed=0, seqlen=seqlen,
                              sparsity_ratio=n / m, sparsity_type=pattern, prune_method="ria", a=0.5, reconstruction=False,
                              reallocation=reallocation, lsa=lsa, fast=False, importance_score="sum", gptq=False,
                              per_outneuron=False, semi_sparse_acc=False)
    reference.get_loaders = lambda *a, **k: ([(w.unsqueeze(0), None) for w in windows], None)
    shipped = reference.WrappedGPT
    reference.WrappedGPT = float64_norms(reference) if norms64 else shipped
    model.seqlen, model.hf_device_map = seqlen, {}
    started = time.perf_counter()
    try:
        with torch.inference_mode():  # the loaded weights are inference tensors
            reference.prune_ria(args, model, None, torch.device("cpu"), prune_n=n, prune_m=m)
    finally:
        reference.WrappedGPT = shipped
    return time.perf_counter() - started


@contextlib.contextmanager
def absorption(allowed: bool):
    """zprune as shipped (`allowed`), or with no block's plan found, so that every permuted layer keeps its mask
    mapped back to the original column order, as RIA's code does (its o_proj then searched over all its columns,
    not only within each key-value head)."""
    shipped = permuted.plan_block
    if not allowed:
        permuted.plan_block = lambda *args, **kwargs: {}
    try:
        yield
    finally:
        permuted.plan_block = shipped


def run(args: argparse.Namespace) -> list[dict]:
    unknown = [side for side in args.sides.split(",") if side not in SIDES]
    if unknown:
        raise SystemExit(f"unknown side(s) {', '.join(unknown)} (known: {', '.join(SIDES)})")
    reference = reference_module(args.reference) if "reference" in args.sides else None  # also for reference-f64
    cache = Path(tempfile.mkdtemp(prefix="zprune-bench-fidelity-permute-"))
    handle = ModelHandle(args.model, "cpu", "float32")
    with_rotary(handle.model)
    calibration = Calibration(args.data, args.nsamples, args.seqlen, args.seed)
    windows = drawn_windows(handle, resolve_source(args.data, "train", DATA_DIR), calibration, ensure(None))
    plan = EvalPlan(Evaluation(data="wikitext2", seqlen=512, max_windows=args.eval_windows), DATA_DIR)
    snapshot, library, cells = DenseSnapshot(handle.model), library_state(), []
    settings = Settings(cache_dir=cache, data_dir=DATA_DIR, device="cpu")
    for permute in args.permute.split(","):
        for side in args.sides.split(","):
            snapshot.restore()
            if side in ("reference", "reference-f64"):
                seconds = reference_prune(reference, handle.model, windows, args.pattern, permute, args.nsamples, args.seqlen,
                                          norms64=side == "reference-f64")
            else:
                entry = calibrate(handle, calibration, gram=False, settings=settings).entry
                layout = "free" if side == "zprune-free" else "native"
                recipe = PruneRecipe("ria", pattern=args.pattern, permute=permute, propagate="pruned", permute_layout=layout)
                with absorption(side != "zprune-mapped"):
                    seconds = prune_in_memory(handle.model, entry, recipe).seconds
            metrics = {m.name: m.value for m in measure(handle.model, handle.tokenizer, plan)}
            row = {"pattern": args.pattern, "permute": permute, "side": side, "seed": args.seed, "ppl": round(metrics["ppl:wikitext2"], 4),
                   "sparsity": metrics["sparsity"], "prune_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                   "library": library}
            cells.append(row)
            record(row, args.out)
    return cells


def seeds_table(rows: list[dict]) -> str:
    """The cells of several seeds: one line per (permute, seed), then per permute each side's geometric mean
    ratio to the reference (and to reference-f64) over the seeds that measured both."""
    for row in rows:
        row["cell"] = f"{row['permute']} seed {row.get('seed', 0)}"
    lines = [sides_table(rows, "cell", "permute, calibration seed"), ""]
    for permute in dict.fromkeys(r["permute"] for r in rows):
        by_seed: dict[int, dict[str, float]] = {}
        for r in rows:
            if r["permute"] == permute:
                by_seed.setdefault(r.get("seed", 0), {})[r["side"]] = r["ppl"]
        sides = list(dict.fromkeys(r["side"] for r in rows if r["permute"] == permute))
        for base in ("reference", "reference-f64"):
            for side in (s for s in sides if s != base and not (base == "reference-f64" and s == "reference")):
                ratios = [p[side] / p[base] for p in by_seed.values() if side in p and base in p]
                if ratios:
                    mean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
                    lines.append(f"{permute}: {side} / {base}, geometric mean over {len(ratios)} seed(s): {mean:.4f} "
                                 f"(from {min(ratios):.4f} to {max(ratios):.4f})")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table:
        print(seeds_table([json.loads(line) for f in args.table for line in f.read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(args.threads)
    rows = run(args)
    print("\n" + sides_table(rows, "permute", "permute"))
    print(f"at the end: {library_state()}")


if __name__ == "__main__":
    main()
