"""Benchmark: pruning time of every method from a warm store, and perplexity with dense vs pruned propagation.

Two parts (each a few minutes on 2 CPU cores; `--part all` runs both):

timing (default). One store with Gram matrices is built first (a miss, timed once). Every repetition then
  times a norms-only calibration into a fresh cache (a miss: what a score method needs), the floor --
  reading and writing every pruned Linear weight once, `w = lin.weight.data.clone(); lin.weight.data.copy_(w)`
  -- and, in a rotating order, each configuration as a re-run from the existing store: `calibrate(...)`
  (a cache hit, model loaded) + `prune_in_memory(...)` at 50%, dense weights restored before each.
  Pruned propagation caches the statistics it collects (stats/<key>-p<run>/), so those configurations are
  timed twice: the first run with these settings (forward passes) and the repeat (cached statistics); the
  cached entries are deleted at the end of every repetition so that each repetition's first run is one.
  Ratios are medians over the repetitions of ratios taken within one repetition.

ppl. wikitext-2 perplexity (8 x 256 windows by default) of the dense model and of every method at 50% with
  dense and with pruned propagation, from one store (first runs, no cached propagated statistics).

    python tests/benchmarks/bench_prune.py [--part timing|ppl|all] [--nsamples 4] [--seqlen 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import C4, DATA_DIR, library_state  # noqa: E402,F401  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.verbs.calibration import calibrate  # noqa: E402
from zprune_cli.evaluation.run import EvalPlan, Evaluation, measure  # noqa: E402
from zprune_cli.models.blocks import pruned_layers  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.engine.pipeline import DenseSnapshot, prune_in_memory  # noqa: E402
from zprune_cli.engine.recipe import PruneRecipe  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402

METHODS = ["magnitude", "wanda", "ria", "zpruner", "sparsegpt"]
SCORE_METHODS = ["magnitude", "wanda", "ria", "zpruner"]
GOAL_FLOOR = 2.0  # score methods: prune time <= 2x reading + writing the pruned weights once
GOAL_WARM = 0.05  # warm re-run (store exists, model loaded) <= 5% of the calibration time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("timing", "ppl", "all"), default="timing")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(C4), help="calibration text (default: the shared C4 shard)")
    p.add_argument("--nsamples", type=int, default=4,
                   help="calibration windows (default 4: pruned propagation reruns them through every block)")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=3, help="timing repetitions (medians are reported; at least 3 advised)")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seqlen", type=int, default=256)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine, 2 threads stall on a busy core; 0 = torch's choice)")
    return p.parse_args(argv)


def med(xs):
    return statistics.median(xs)


def auto_propagation(method: str) -> str:
    return PruneRecipe(method, 0.5).propagate


@torch.inference_mode()
def floor_seconds(linears) -> float:
    """Read and write every pruned Linear weight once: the least any method can do."""
    started = time.perf_counter()
    for lin in linears:
        w = lin.weight.data.clone()
        lin.weight.data.copy_(w)
    return time.perf_counter() - started


class Bench:
    def __init__(self, args, root: Path):
        self.args, self.root = args, root
        started = time.perf_counter()
        self.handle = ModelHandle(args.model, device="cpu")
        self.model, self.tokenizer = self.handle.model, self.handle.tokenizer
        print(f"model loaded in {time.perf_counter() - started:.1f} s", flush=True)
        with torch.inference_mode():  # warm-up: the first forward pass of a process is several times slower
            self.model(torch.zeros((1, 32), dtype=torch.long))
        self.snapshot = DenseSnapshot(self.model)
        self.linears = [lin for _, _, found in pruned_layers(self.model, []) for lin in found.values()]
        n = sum(lin.weight.numel() for lin in self.linears)
        print(f"{len(self.linears)} pruned Linear layers, {n / 1e6:.1f} M weights ({n * 4 / 2**20:.0f} MiB fp32)")
        self.calibration = Calibration(data=args.data, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
        # One store with Gram matrices serves every re-run (a store without them serves only the score methods).
        self.gram_cache = root / "gram"
        self.gram_settings = self.settings(self.gram_cache)
        result = calibrate(self.handle, self.calibration, gram=True, settings=self.gram_settings)
        assert not result.hit
        self.gram_cal_s = result.seconds
        print(f"calibration with Gram (miss): {self.gram_cal_s:.2f} s", flush=True)

    @staticmethod
    def settings(cache: Path) -> Settings:
        return Settings(cache_dir=cache, data_dir=DATA_DIR, device="cpu")

    def prune_once(self, method: str, propagate: str):
        """Restore the dense weights; calibrate (a hit) + prune. Returns (report, hit seconds, total seconds)."""
        recipe = PruneRecipe(method, self.args.sparsity, propagate=propagate)
        self.snapshot.restore()
        t0 = time.perf_counter()
        hit = calibrate(self.handle, self.calibration, gram=recipe.needs_gram, settings=self.gram_settings)
        report = prune_in_memory(self.model, hit.entry, recipe)
        total = time.perf_counter() - t0
        assert hit.hit, "the store was built before: this must be a cache hit"
        assert abs(report.overall - self.args.sparsity) < 1e-3, report.overall
        return report, hit.seconds, total

    def drop_propagated(self) -> int:
        """Delete the cached statistics of pruned-propagation runs, so the next such run collects them again."""
        stats = self.gram_cache / "stats"
        found = [p for p in stats.iterdir() if p.is_dir() and "-p" in p.name] if stats.is_dir() else []
        for path in found:
            shutil.rmtree(path)
            (stats / f"{path.name}.lock").unlink(missing_ok=True)
        return len(found)

    # --- timing ------------------------------------------------------------------------------------
    def timing(self) -> None:
        args = self.args
        timed = [(m, auto_propagation(m)) for m in METHODS]
        timed += [(m, "pruned" if auto_propagation(m) == "dense" else "dense") for m in ("wanda", "zpruner")]
        runs = [(m, p, r) for m, p in timed for r in (("first", "repeat") if p == "pruned" else ("-",))]
        prune_s = {k: [] for k in runs}
        hit_s = {k: [] for k in runs}
        warm_s = {k: [] for k in runs}
        cal_norms, floors = [], []
        for rep in range(args.reps):
            cache = self.root / f"norms-{rep}"
            result = calibrate(self.handle, self.calibration, gram=False, settings=self.settings(cache))
            assert not result.hit
            cal_norms.append(result.seconds)
            shutil.rmtree(cache, ignore_errors=True)
            fl = [floor_seconds(self.linears) for _ in range(5)]
            shift = rep % len(timed)
            for method, propagate in timed[shift:] + timed[:shift]:
                for run in (("first", "repeat") if propagate == "pruned" else ("-",)):
                    report, hit, total = self.prune_once(method, propagate)
                    key = (method, propagate, run)
                    prune_s[key].append(report.seconds)
                    hit_s[key].append(hit)
                    warm_s[key].append(total)
            dropped = self.drop_propagated()
            assert dropped == sum(p == "pruned" for _, p in timed), dropped
            fl += [floor_seconds(self.linears) for _ in range(4)]
            floors.append(med(fl))
            print(f"rep {rep + 1}/{args.reps} (load avg {os.getloadavg()[0]:.2f}): cal norms {cal_norms[-1]:.2f} s, "
                  f"floor {floors[-1] * 1e3:.0f} ms, "
                  + ", ".join(f"{m}/{p}{'/' + r if r != '-' else ''} {prune_s[(m, p, r)][-1]:.2f} s" for m, p, r in runs),
                  flush=True)
        self.snapshot.restore()

        reps = range(args.reps)
        cal = {"norms": cal_norms, "gram": [self.gram_cal_s] * args.reps}
        print()
        print(f"floor (read + write all pruned weights once): median {med(floors) * 1e3:.1f} ms "
              f"(per rep: {', '.join(f'{f * 1e3:.1f}' for f in floors)} ms)")
        print(f"calibration miss ({args.nsamples} x {args.seqlen}): norms only {med(cal_norms):.2f} s "
              f"(median of {args.reps}), with Gram {self.gram_cal_s:.2f} s (1 run: the store every re-run uses)")
        print()
        print(f"Prune time from an existing store, {args.sparsity:.0%} unstructured "
              "(medians; ratios are medians of per-rep ratios)")
        header = (f"{'method':<11}{'propagate':<11}{'run':<8}{'prune s':>9}{'x floor':>9}{'goal':>8}"
                  f"{'hit s':>8}{'re-run s':>10}{'% of cal':>10}{'cal':>7}{'goal':>8}")
        print(header)
        print("-" * len(header))
        for key in runs:
            method, propagate, run = key
            x_floor = med([prune_s[key][r] / floors[r] for r in reps])
            kind = "gram" if PruneRecipe(method, 0.5).needs_gram else "norms"
            pct = med([warm_s[key][r] / cal[kind][r] for r in reps])
            default = propagate == auto_propagation(method)
            goal_floor = ("MET" if x_floor <= GOAL_FLOOR else "MISSED") if method in SCORE_METHODS and default else "-"
            goal_warm = ("MET" if pct <= GOAL_WARM else "MISSED") if default else "-"
            print(f"{method:<11}{propagate + ('*' if default else ''):<11}{run:<8}{med(prune_s[key]):>9.2f}{x_floor:>9.0f}"
                  f"{goal_floor:>8}{med(hit_s[key]):>8.3f}{med(warm_s[key]):>10.2f}{pct * 100:>9.1f}%{kind:>7}{goal_warm:>8}")
        print("* = the method's default (auto) propagation. run: first = first run with these settings (collects and "
              "caches the propagated statistics), repeat = same settings again (cached).")
        print(f"Goals: score methods <= {GOAL_FLOOR:g}x floor; re-run (calibrate hit + prune, model loaded) <= "
              f"{GOAL_WARM:.0%} of the calibration the method needs (norms only; with Gram for sparsegpt).")
        print()
        print("Pruned / dense propagation, prune time (median of per-rep ratios):")
        for method in ("wanda", "zpruner"):
            dense = prune_s[(method, "dense", "-")]
            for run in ("first", "repeat"):
                pruned = prune_s[(method, "pruned", run)]
                ratio = med([pruned[r] / dense[r] for r in reps])
                print(f"  {method:<8} pruned ({run:<6}) {med(pruned):6.2f} s / dense {med(dense):5.2f} s = {ratio:.2f}x")

    # --- perplexity --------------------------------------------------------------------------------
    def ppl(self) -> None:
        args = self.args
        plan = EvalPlan(Evaluation(data=("wikitext2",), seqlen=args.eval_seqlen, max_windows=args.eval_windows), DATA_DIR)
        self.drop_propagated()
        self.snapshot.restore()
        dense = measure(self.model, self.tokenizer, plan)[0].value
        ppls, seconds = {}, {}
        for method in METHODS:
            for propagate in ("dense", "pruned"):
                report, _, _ = self.prune_once(method, propagate)
                seconds[(method, propagate)] = report.seconds
                ppls[(method, propagate)] = measure(self.model, self.tokenizer, plan)[0].value
                print(f"  {method}/{propagate}: ppl {ppls[(method, propagate)]:.3f} (pruned in {report.seconds:.1f} s)", flush=True)
        self.snapshot.restore()
        print()
        print(f"Perplexity, wikitext2 test, {args.eval_windows} x {args.eval_seqlen} windows, {args.sparsity:.0%} unstructured, "
              f"calibration {args.nsamples} x {args.seqlen} C4 tokens (dense model: {dense:.3f})")
        header = f"{'method':<11}{'dense prop':>12}{'pruned prop':>13}{'pruned-dense':>14}{'rel':>9}{'default':>9}"
        print(header)
        print("-" * len(header))
        print(f"{'(dense)':<11}{dense:>12.3f}{dense:>13.3f}{0:>+14.3f}{0:>+8.1f}%{'-':>9}")
        for method in METHODS:
            d, p = ppls[(method, "dense")], ppls[(method, "pruned")]
            rel = (p - d) / d * 100 if math.isfinite(d) and d else float("nan")
            print(f"{method:<11}{d:>12.3f}{p:>13.3f}{p - d:>+14.3f}{rel:>+8.1f}%{auto_propagation(method):>9}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    print(f"{library_state()}; {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs, "
          f"cuda available: {torch.cuda.is_available()}", flush=True)
    print(f"part {args.part}: model {args.model}, calibration {args.nsamples} x {args.seqlen} tokens of {Path(args.data).name}, "
          f"sparsity {args.sparsity}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    root = Path(tempfile.mkdtemp(prefix="zprune-bench-prune-"))
    try:
        bench = Bench(args, root)
        if args.part in ("timing", "all"):
            bench.timing()
        if args.part in ("ppl", "all"):
            print()
            bench.ppl()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal wall time {time.perf_counter() - wall:.0f} s")
    print(f"at the end: {library_state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
