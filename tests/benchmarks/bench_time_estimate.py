"""Benchmark: `--dry-run`'s wall-time estimate against the real steps of the same run, in one process.

The estimate is built as `zprune prune MODEL --method METHOD -n N -l L --dry-run` builds it (the model's
shapes from its config, this machine's rates measured now); then the model is loaded and the run's two
steps are timed apart: calibration (a fresh cache) and pruning (no save). Loading and tokenising the
calibration text are timed too (tokenising once more beforehand, then taken out of calibration's time),
though the estimate counts neither. The load average is printed before and after: on a shared machine the rates
and the run both slow down, not always alike.

    python tests/benchmarks/bench_time_estimate.py [--model smollm2-135m] [--method wanda] [--nsamples 8] [--seqlen 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _bench import C4, REPO, library_state  # noqa: E402  (sets offline env first)

sys.path.insert(0, str(REPO))

from zprune_cli.verbs.calibration import calibrate, calibration_inputs  # noqa: E402
from zprune_cli.data.sources import resolve_source  # noqa: E402
from zprune_cli.estimation.estimate import Target, estimate_prune  # noqa: E402
from zprune_cli.estimation.machine import timed  # noqa: E402
from zprune_cli.estimation.shape import model_shape  # noqa: E402
from zprune_cli.estimation.throughput import measure_throughput  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.engine.pipeline import prune_in_memory  # noqa: E402
from zprune_cli.base.progress import NullProgress  # noqa: E402
from zprune_cli.engine.recipe import PruneRecipe, calibration_needs  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="wanda")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the rates and the run alike (0: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # as the other scripts: one busy core stalls two threads' barriers
    print(f"{library_state()}; load average before: {os.getloadavg()}; threads {args.threads or 'torch default'}")
    cal, recipe = Calibration(str(C4), args.nsamples, args.seqlen, 0), PruneRecipe(method=args.method)
    handle = ModelHandle(args.model, "cpu", "auto")
    target = Target(model_shape(handle.config, handle.source), handle.dtype, handle.device)
    estimate = timed(estimate_prune(target, cal, [recipe], None), measure_throughput(handle.device, handle.dtype, target.shape.hidden, target.shape.widest))
    t = estimate.time_estimate
    started = time.perf_counter()
    handle.model  # noqa: B018
    loading = time.perf_counter() - started
    settings = Settings(cache_dir=tempfile.mkdtemp(prefix="zprune-bench-time-"), device="cpu")
    started = time.perf_counter()  # the calibration text tokenised, as calibrate does it first (not estimated)
    calibration_inputs(handle, resolve_source(cal.data, "train"), cal.nsamples, cal.seqlen, cal.seed, NullProgress())
    tokenising = time.perf_counter() - started
    started = time.perf_counter()
    result = calibrate(handle, cal, **calibration_needs([recipe]), settings=settings)
    calibrating = time.perf_counter() - started - tokenising
    started = time.perf_counter()
    prune_in_memory(handle.model, result.entry, recipe)
    pruning = time.perf_counter() - started
    measured = {"calibrating": calibrating, f"pruning {recipe.label()}": pruning}
    print(f"rates measured: {t['flops_per_s'] / 1e9:.1f} GFLOP/s, {t['selected_per_s'] / 1e6:.2f} M weights/s selected")
    print(f"{'step':28} {'estimate s':>11} {'measured s':>11} {'ratio':>6}")
    for step, seconds in measured.items():
        print(f"{step:28} {t['by_step'][step]:11.1f} {seconds:11.1f} {t['by_step'][step] / seconds:6.2f}")
    total = sum(measured.values())
    print(f"{'total (estimated steps)':28} {t['seconds']:11.1f} {total:11.1f} {t['seconds'] / total:6.2f}")
    print(f"{'loading (not estimated)':28} {'':11} {loading:11.1f}")
    print(f"{'tokenising (not estimated)':28} {'':11} {tokenising:11.1f}  (taken out of calibrating above)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
