"""The grid's wall time against its floor and against independent prune + eval runs.

  A  compare(): 5 methods x 3 sparsities on one loaded model, fresh cache (one calibration, 15 cells)
  B  the floor, measured in the same run: one calibration + 15 evaluations of the same model
  C  independent runs, as users of the reference scripts do: `zprune prune --out` then `zprune eval`
     in fresh processes with no store (each run loads the model and calibrates again). K runs are
     measured; the 15-run figure is K's mean times 15, and the table says so.

  python tests/benchmarks/bench_compare.py [--nsamples 8 --seqlen 256 --windows 4 --independent 5 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import C4, DATA_DIR  # noqa: E402  (sets offline env first)
METHODS = "magnitude,wanda,sparsegpt,ria,zpruner"
SPARSITIES = "0.5,0.6,0.7"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--windows", type=int, default=4, help="wikitext2 evaluation windows per cell")
    ap.add_argument("--independent", type=int, default=5, help="independent prune+eval runs to time (C), one per method in turn")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice); 1 keeps a shared 2-core machine steady")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # for the subprocesses in C
    os.environ.setdefault("ZPRUNE_DATA_DIR", str(DATA_DIR))
    c4 = str(C4)

    from zprune_cli.verbs.calibration import calibrate
    from zprune_cli.verbs.comparison import compare, grid_recipes
    from zprune_cli.evaluation.run import EvalPlan, Evaluation, measure
    from zprune_cli.models.handle import ModelHandle
    from zprune_cli.base.settings import Calibration, Settings

    handle = ModelHandle(args.model, device="cpu")
    handle.model  # load once, outside every timing
    cal = Calibration(data=c4, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    evaluation = Evaluation(data=("wikitext2",), seqlen=args.seqlen, max_windows=args.windows)

    def settings(cache: str) -> Settings:
        return Settings(cache_dir=cache, data_dir=DATA_DIR, device="cpu")

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        outcome = compare(handle, grid_recipes(METHODS, SPARSITIES), evaluation, calibration=cal,
                          settings=settings(cache))
        grid = time.perf_counter() - t
    assert outcome.computed == 16, outcome.computed

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        calibrate(handle, cal, gram=True, settings=settings(cache))  # SparseGPT is in the grid: Gram matrices
        calibration = time.perf_counter() - t
    plan = EvalPlan(evaluation, DATA_DIR)
    measure(handle.model, handle.tokenizer, plan)  # tokenise once, as compare does
    evals = []
    for _ in range(15):
        t = time.perf_counter()
        measure(handle.model, handle.tokenizer, plan)
        evals.append(time.perf_counter() - t)
    floor = calibration + sum(evals)

    runs = []
    zprune = [sys.executable, "-m", "zprune_cli"]
    for k in range(args.independent):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "ZPRUNE_HOME": tmp}
            out = Path(tmp) / "out"
            t = time.perf_counter()
            subprocess.run([*zprune, "-q", "prune", args.model, "--method", METHODS.split(",")[k % 5], "--sparsity", "0.5",
                            "--data", c4, "-n", str(args.nsamples), "-l", str(args.seqlen), "--out", str(out), "--device", "cpu"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([*zprune, "-q", "eval", str(out), "--eval-seqlen", str(args.seqlen), "--max-windows", str(args.windows),
                            "--device", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t)
    independent = statistics.mean(runs) * 15

    print(f"grid: {METHODS} x {SPARSITIES} (+ dense), calibration {args.nsamples} x {args.seqlen} from C4, "
          f"eval {args.windows} x {args.seqlen} wikitext2 windows per cell, CPU")
    print(f"{'what':58} {'seconds':>9} {'ratio':>7}")
    print(f"{'A  compare (one calibration, 16 cells incl. dense)':58} {grid:9.1f} {1.0:7.2f}")
    print(f"{'B  one calibration + 15 evaluations (floor)':58} {floor:9.1f} {grid / floor:7.2f}  A/B, goal <= 1.3")
    print(f"{'   of which calibration (with Gram)':58} {calibration:9.1f}")
    print(f"{'   of which one evaluation (median)':58} {statistics.median(evals):9.2f}")
    label = f"C  15 independent prune+eval runs ({len(runs)} measured x 15/{len(runs)})"
    print(f"{label:58} {independent:9.1f} {independent / grid:7.2f}  C/A")
    methods = METHODS.split(",")
    print("   independent runs measured: " + ", ".join(f"{methods[k % 5]} {r:.1f}s" for k, r in enumerate(runs)))


if __name__ == "__main__":
    main()
