"""Benchmark: zprune's SparseGPT and ALPS on one layer at Llama-2-7B's input widths, side by side with the
reference SparseGPT class (IST-DASLab/sparsegpt's `sparsegpt.py`), same weight, same Gram, one thread.

The reference is not part of zprune and is never copied into it: fetch the repository yourself and pass the
folder that holds its `sparsegpt.py` (and `quant.py`, which it imports):

    git clone https://github.com/IST-DASLab/sparsegpt /tmp/sparsegpt-ref
    python tests/benchmarks/bench_layer_solvers.py --reference /tmp/sparsegpt-ref
    python tests/benchmarks/bench_layer_solvers.py --reference /tmp/sparsegpt-ref --shapes 4096x4096 --alps

Layers (out x in): 4096 x 4096 (q/k/v/o_proj, a 4096-wide input) and 4096 x 11008 (down_proj, the MLP's
11008-wide input). Inputs: `--tokens` rows (default 4096 = 8 x 512) of heavy-tailed, correlated activations
(per-channel scales log-normal, plus a rank-64 shared part), so H is ill-conditioned and, at 11008 wide,
rank-deficient, as real Gram matrices are. The reference's H is set to zprune's H = 2/N sum x x^T (SparseGPT
is invariant to the scale of H: its damping is relative). The layer error is ||X (W0 - W)^T||^2 =
tr((W0 - W) G (W0 - W)^T), in float64. Each solver runs `--reps` times, alternating which goes first; medians.
The reference's `torch.cuda.synchronize()` is made a no-op (this torch has no CUDA) and its prints are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import time
from pathlib import Path

from _bench import library_state  # noqa: F401  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.base.masks import Pattern  # noqa: E402
from zprune_cli.methods import get_method  # noqa: E402
from zprune_cli.stats.types import LayerStats  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="folder holding IST-DASLab/sparsegpt's sparsegpt.py")
    p.add_argument("--shapes", default="4096x4096,4096x11008", help="out x in, comma-separated")
    p.add_argument("--patterns", default="0.5,2:4")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--alps", action="store_true", help="also zprune's ALPS (minutes per layer at these widths)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def activations_gram(width: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """G = X^T X [width, width] float32 for heavy-tailed, correlated X [tokens, width], built in chunks."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.randn(width, generator=gen).mul_(1.0).exp_()  # log-normal channel scales: outliers
    mix = torch.randn(64, width, generator=gen) / 8  # a shared low-rank part: correlated channels
    gram = torch.zeros(width, width)
    for start in range(0, tokens, 512):
        n = min(512, tokens - start)
        x = (torch.randn(n, width, generator=gen) + torch.randn(n, 64, generator=gen) @ mix) * scale
        gram.addmm_(x.T, x)
    return gram


def layer_error(W0: torch.Tensor, W: torch.Tensor, gram: torch.Tensor) -> float:
    D = (W0 - W).double()
    return float(((D @ gram.double()) * D).sum())


def load_reference(folder: Path):
    """The reference module, imported from its own folder (it imports `quant` by name)."""
    sys.path.insert(0, str(folder))
    torch.cuda.synchronize = lambda *a, **k: None  # the reference calls it unconditionally; no CUDA here
    import sparsegpt as reference  # noqa: PLC0415

    return reference


def run_reference(reference, W0: torch.Tensor, H: torch.Tensor, sparsity: float, pattern: Pattern):
    layer = torch.nn.Linear(W0.shape[1], W0.shape[0], bias=False)
    layer.weight.data = W0.clone()
    solver = reference.SparseGPT(layer)
    solver.H = H.clone()  # fasterprune modifies H in place (dead columns, damping)
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        solver.fasterprune(sparsity, prunen=pattern.n, prunem=pattern.m, blocksize=128, percdamp=0.01)
        seconds = time.perf_counter() - started
    return seconds, layer.weight.data


def run_zprune(method: str, W0: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern):
    solver = get_method(method)
    started = time.perf_counter()
    W = solver.prune(W0, stats, sparsity, pattern).weight
    return time.perf_counter() - started, W


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference)
    print(f"{library_state()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), tokens {args.tokens}, "
          f"reps {args.reps}, load average {os.getloadavg()[0]:.2f}; reference {args.reference}", flush=True)
    rows = []
    for shape in args.shapes.split(","):
        out, width = (int(v) for v in shape.split("x"))
        gram = activations_gram(width, args.tokens)
        stats = LayerStats(sumsq=gram.diagonal().double().clone(), n_tokens=args.tokens, gram=gram)
        H = stats.hessian()
        W0 = torch.randn(out, width, generator=torch.Generator().manual_seed(1)) / math.sqrt(width)
        for spec in args.patterns.split(","):
            pattern, sparsity = (Pattern.parse(spec), 0.5) if ":" in spec else (Pattern(), float(spec))
            rows.append(compare(args, reference, W0, stats, H, gram, sparsity, pattern, f"{out}x{width}", spec))
    print("\n| layer (out x in) | pattern | reference SparseGPT | zprune SparseGPT | ratio | layer error: reference | "
          "zprune | relative difference |" + (" ALPS | ALPS error / SparseGPT's |" if args.alps else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.alps else ""))
    for r in rows:
        alps = f" {r['alps_s']:.1f} s | {r['alps_err'] / r['zp_err']:.3f} |" if args.alps else ""
        print(f"| {r['shape']} | {r['pattern']} | {r['ref_s']:.2f} s | {r['zp_s']:.2f} s | {r['zp_s'] / r['ref_s']:.2f}x | "
              f"{r['ref_err']:.6g} | {r['zp_err']:.6g} | {abs(r['zp_err'] - r['ref_err']) / r['ref_err']:.1e} |{alps}")
    print(f"at the end: {library_state()}; load average {os.getloadavg()[0]:.2f}")


def compare(args, reference, W0, stats, H, gram, sparsity: float, pattern: Pattern, shape: str, spec: str) -> dict:
    ref_s, zp_s = [], []
    for rep in range(args.reps):
        order = ("ref", "zp") if rep % 2 == 0 else ("zp", "ref")
        for who in order:
            if who == "ref":
                seconds, W_ref = run_reference(reference, W0, H, sparsity, pattern)
                ref_s.append(seconds)
            else:
                seconds, W_zp = run_zprune("sparsegpt", W0, stats, sparsity, pattern)
                zp_s.append(seconds)
        print(f"{shape} {spec} rep {rep + 1}: reference {ref_s[-1]:.2f} s, zprune {zp_s[-1]:.2f} s "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    row = {"shape": shape, "pattern": spec, "ref_s": statistics.median(ref_s), "zp_s": statistics.median(zp_s),
           "ref_err": layer_error(W0, W_ref, gram), "zp_err": layer_error(W0, W_zp, gram),
           "ref_zeros": int((W_ref == 0).sum()), "zp_zeros": int((W_zp == 0).sum())}
    print(f"  zeros: reference {row['ref_zeros']}, zprune {row['zp_zeros']} of {W0.numel()}", flush=True)
    if args.alps:
        row["alps_s"], W_alps = run_zprune("alps", W0, stats, sparsity, pattern)
        row["alps_err"] = layer_error(W0, W_alps, gram)
        print(f"  alps {row['alps_s']:.1f} s, error {row['alps_err']:.6g}", flush=True)
    return row


if __name__ == "__main__":
    main()
