"""Benchmark: the Gram-based recipes (ALPS, PCG reconstruction, swap refinement) against SparseGPT.

The protocol of the methods issue: SmolLM2-135M, calibration C4 32 x 512 (seed 0, the shared C4 shard),
pruned propagation (every recipe here updates weights, so `auto` is `pruned`), wikitext-2 test
perplexity on the first 40 windows of 512 tokens. One calibration with Gram matrices serves every cell;
each cell restores the dense weights, prunes (its propagation statistics are computed fresh: a new
cache folder per run) and is evaluated. Prune times are reported as a ratio to SparseGPT's at the same
sparsity in the same run.

Cells are appended to a JSON-lines file as they finish (`--out`, default bench_methods.jsonl in the
cache folder); a re-run with the same file skips finished cells, so the grid can be run in parts:

    python tests/benchmarks/bench_methods.py                       # every recipe x 50%, 60%, 70%, 2:4
    python tests/benchmarks/bench_methods.py --columns 0.5,2:4 --recipes sparsegpt,alps
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from _bench import C4, DATA_DIR, library_state  # noqa: E402,F401  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.verbs.calibration import calibrate  # noqa: E402
from zprune_cli.evaluation.run import EvalPlan, Evaluation, measure  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.engine.pipeline import DenseSnapshot, prune_in_memory  # noqa: E402
from zprune_cli.engine.recipe import PruneRecipe  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402

# name -> recipe fields besides sparsity / pattern
RECIPES = {
    "sparsegpt": dict(method="sparsegpt"),
    "alps": dict(method="alps"),
    "wanda+pcg": dict(method="wanda", reconstruct="pcg"),
    "zpruner+pcg": dict(method="zpruner", reconstruct="pcg"),
    "wanda+swaps+pcg": dict(method="wanda", refine="swaps", reconstruct="pcg"),
    "zpruner+swaps+pcg": dict(method="zpruner", refine="swaps", reconstruct="pcg"),
    # --permute: N:M columns only (unstructured cells of these are skipped)
    "ria+lsa": dict(method="ria", permute="lsa"),
    "wanda+swaps+pcg+lsa": dict(method="wanda", refine="swaps", reconstruct="pcg", permute="lsa"),
    "alps+lsa": dict(method="alps", permute="lsa"),
    "wanda+swaps+pcg+lsa-free": dict(method="wanda", refine="swaps", reconstruct="pcg", permute="lsa", permute_layout="free"),
    "alps+lsa-free": dict(method="alps", permute="lsa", permute_layout="free"),
    # --wbits (issue 23): 4 and 8 bits, asymmetric, groups of 64 (SmolLM2's widths, 576 and 1536, are not
    # multiples of the default 128); SparseGPT quantizes inside its own walk, the others after their mask by GPTQ
    "sparsegpt+w4": dict(method="sparsegpt", wbits=4, group_size=64),
    "alps+w4": dict(method="alps", wbits=4, group_size=64),
    "wanda+swaps+pcg+w4": dict(method="wanda", refine="swaps", reconstruct="pcg", wbits=4, group_size=64),
    "sparsegpt+w8": dict(method="sparsegpt", wbits=8, group_size=64),
}
COLUMNS = ["0.5", "0.6", "0.7", "2:4"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(C4))
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--columns", default=",".join(COLUMNS), help="sparsities and N:M patterns, comma-separated")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: a new temporary one)")
    p.add_argument("--out", type=Path, default=None, help="JSON-lines file of finished cells (resumable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    return p.parse_args(argv)


def recipe_for(name: str, column: str) -> PruneRecipe:
    where = dict(pattern=column) if ":" in column else dict(sparsity=float(column))
    return PruneRecipe(**RECIPES[name], **where)


def run(args: argparse.Namespace) -> list[dict]:
    cache = args.cache or Path(tempfile.mkdtemp(prefix="zprune-bench-methods-"))
    out = args.out or cache / "bench_methods.jsonl"
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    library = library_state()  # the code this process imported (HEAD may move while a long run goes on)
    settings = Settings(cache_dir=cache, data_dir=DATA_DIR, device="cpu")
    handle = ModelHandle(args.model, "cpu", "float32")
    started = time.perf_counter()
    result = calibrate(handle, Calibration(args.data, args.nsamples, args.seqlen, 0), gram=True, settings=settings)
    print(f"calibration: {time.perf_counter() - started:.0f} s ({'hit' if result.hit else 'computed'}), key {result.key}", flush=True)
    plan = EvalPlan(Evaluation(data="wikitext2", seqlen=args.eval_seqlen, max_windows=args.eval_windows), DATA_DIR)
    cells = [("dense", None)] + [(name, column) for column in args.columns.split(",") for name in args.recipes.split(",")
                                 if ":" in column or RECIPES[name].get("permute", "none") == "none"]
    snapshot = DenseSnapshot(handle.model)
    for name, column in cells:
        if any(c["recipe"] == name and c["column"] == column for c in done):
            continue
        snapshot.restore()
        seconds = 0.0
        if column is not None:
            report = prune_in_memory(handle.model, result.entry, recipe_for(name, column))
            seconds = report.seconds
        metrics = {m.name: m.value for m in measure(handle.model, handle.tokenizer, plan)}
        cell = {"recipe": name, "column": column, "ppl": metrics["ppl:wikitext2"], "prune_seconds": round(seconds, 1),
                "sparsity": metrics["sparsity"], "library": library}
        done.append(cell)
        with out.open("a") as f:
            f.write(json.dumps(cell) + "\n")
        print(f"{name:>18} {column or '-':>5}: ppl {cell['ppl']:.2f}, prune {seconds:.0f} s", flush=True)
    return done


def table(cells: list[dict], columns: list[str], names: list[str]) -> str:
    """Markdown: perplexity (and prune time as a ratio to SparseGPT's in the same column) per recipe."""
    by = {(c["recipe"], c["column"]): c for c in cells}
    dense = by.get(("dense", None))
    lines = [f"| recipe | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    if dense:
        value = f"{dense['ppl']:.2f}"
        lines.append(f"| dense | {' | '.join(value for _ in columns)} |")
    for name in names:
        row = []
        for column in columns:
            cell, base = by.get((name, column)), by.get(("sparsegpt", column))
            if cell is None:
                row.append("-")
                continue
            ratio = f", {cell['prune_seconds'] / base['prune_seconds']:.2f}x" if base and base["prune_seconds"] else ""
            row.append(f"{cell['ppl']:.2f} ({cell['prune_seconds']:.0f} s{ratio})")
        lines.append(f"| {name} | {' | '.join(row)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cells = run(args)
    print(f"\ntorch threads {torch.get_num_threads()}")
    print(table(cells, args.columns.split(","), args.recipes.split(",")))
    best = {}
    for column in args.columns.split(","):
        scored = [c for c in cells if c["column"] == column and c["recipe"] in RECIPES and math.isfinite(c["ppl"])]
        if scored:
            best[column] = min(scored, key=lambda c: c["ppl"])["recipe"]
    print("best per column:", best)


if __name__ == "__main__":
    main()
