"""Benchmark: peak memory of a weight-updating method's prune of one Llama-2-7B-shaped down_proj (4096 x 11008, its
Gram 11008^2), SparseGPT by default.

Run once per library checkout, each in its own process (VmHWM is per process), to compare two versions of the
code at the same shape, one thread:

    python tests/benchmarks/bench_layer_peak.py [--library DIR] [--rows 4096] [--width 11008]
    python tests/benchmarks/bench_layer_peak.py --method alps --option max_iter=3   # ALPS's peak, three iterations

Prints the peak resident memory the prune adds over the layer's weight and Gram, in MiB and in [in, in] float32
matrices (each 462 MiB at 11008 inputs), beside the method's own estimate (`Method.work_bytes`, what the dry run
counts), and the prune's time. ALPS allocates every iterate in its first iteration, so a capped run shows its peak.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def memory() -> tuple[int, int]:
    """(resident memory's high-water mark, its file-backed part now), in bytes. The prune's own peak is the first's
    growth less the second's: the math libraries' code pages it maps (12 MiB here, the first eigendecomposition)
    are not its matrices, and how many a fault maps varies with the page cache (one run under load read +7 MiB)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmHWM", "RssFile")))
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", type=Path, default=Path(__file__).resolve().parents[2],
                   help="a checkout whose zprune_cli is measured (default: this one)")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--width", type=int, default=11008)
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE, a method option (repeatable)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.library))
    import torch

    from zprune_cli.base.masks import Pattern
    from zprune_cli.methods import get_method
    from zprune_cli.stats.types import LayerStats

    torch.set_num_threads(1)
    n = args.width
    X = torch.randn(n, 256, generator=torch.Generator().manual_seed(0))
    gram = torch.empty(n, n)
    torch.mm(X, X.T, out=gram)  # no [n, n] temporary
    gram.diagonal().add_(1.0)
    del X
    W = torch.randn(args.rows, n, generator=torch.Generator().manual_seed(1)) * 0.02
    stats = LayerStats(gram.diagonal().clone(), 256, gram)
    options = {key: float(value) if "." in value or "e" in value else int(value)
               for key, value in (o.split("=", 1) for o in args.option)}
    method = get_method(args.method, **options)
    (peak, files), started = memory(), time.perf_counter()
    method.prune(W, stats, 0.5, Pattern(), None)
    extra = memory()[0] - peak - (memory()[1] - files)
    estimate = type(method).work_bytes(args.rows * n, n)
    print(f"{args.library}: {args.method} {' '.join(args.option)} 50% of [{args.rows}, {n}]: peak +{extra / 2**20:.0f} MiB "
          f"over the weight and Gram ({extra / (n * n * 4):.2f} [in, in] matrices; work_bytes estimate "
          f"{estimate / 2**20:.0f} MiB), {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
