"""Benchmark: the layer solvers alone, side by side on the same layers and Gram matrices.

A whole `bench_methods` cell also propagates the pruned model block by block; this isolates the part
that differs between recipes: per Linear layer of SmolLM2-135M (C4 32 x 512 Gram matrices from one
calibration), SparseGPT's prune (mask and OBS update), a Wanda mask with the OBS update on that fixed
mask, and the same mask with the PCG solve. The three run one after the other on each layer, so a load
change on the machine hits them alike; the layer error ||X (W0 - W)||^2 of each is summed too.

    python tests/benchmarks/bench_solvers.py --blocks 0,10,20,29 --pattern 2:4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _bench import C4, DATA_DIR, library_state  # noqa: F401  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.verbs.calibration import calibrate  # noqa: E402
from zprune_cli.base.masks import Pattern  # noqa: E402
from zprune_cli.methods import get_method  # noqa: E402
from zprune_cli.methods.obs import reconstruct as reconstruct_obs  # noqa: E402
from zprune_cli.methods.pcg import reconstruct_pcg  # noqa: E402
from zprune_cli.models.blocks import pruned_layers  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", default="0,10,20,29", help="comma-separated block indices")
    p.add_argument("--pattern", default="2:4", help="2:4, 4:8 or a sparsity such as 0.5")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (reuses a stored calibration)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def error(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    D = (W0 - W).double()
    return float((D @ H.double() * D).sum())


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pattern, sparsity = (Pattern.parse(args.pattern), 0.5) if ":" in args.pattern else (Pattern(), float(args.pattern))
    settings = Settings(cache_dir=args.cache or Path(tempfile.mkdtemp()), data_dir=DATA_DIR, device="cpu")
    handle = ModelHandle(args.model, "cpu", "float32")
    entry = calibrate(handle, Calibration(str(C4), 32, 512, 0), gram=True, settings=settings).entry
    sparsegpt, wanda = get_method("sparsegpt"), get_method("wanda")
    seconds = {"sparsegpt": 0.0, "wanda+obs": 0.0, "wanda+pcg": 0.0}
    errors = dict.fromkeys(seconds, 0.0)
    layers = dict((i, linears) for i, _, linears in pruned_layers(handle.model))
    for index in [int(b) for b in args.blocks.split(",")]:
        stats = entry.block_stats(index)
        for name, linear in layers[index].items():
            W, H = linear.weight.detach().float(), stats[name].hessian()
            runs = {"sparsegpt": lambda: sparsegpt.prune(W, stats[name], sparsity, pattern).weight,
                    "wanda+obs": lambda: reconstruct_obs(W, H, wanda.prune(W, stats[name], sparsity, pattern).prune_mask),
                    "wanda+pcg": lambda: reconstruct_pcg(W, H, wanda.prune(W, stats[name], sparsity, pattern).prune_mask)}
            for label, run in runs.items():
                started = time.perf_counter()
                pruned = run()
                seconds[label] += time.perf_counter() - started
                errors[label] += error(W, pruned, H)
    print(f"{library_state()}; {args.model}, blocks {args.blocks}, {args.pattern}, torch threads {torch.get_num_threads()}")
    print("| solver | seconds | ratio to SparseGPT | summed layer error |\n|---|---:|---:|---:|")
    for label in seconds:
        print(f"| {label} | {seconds[label]:.2f} | {seconds[label] / seconds['sparsegpt']:.2f}x | {errors[label]:.4g} |")


if __name__ == "__main__":
    main()
