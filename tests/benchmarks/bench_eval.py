"""Benchmark: `perplexity()` throughput against a plain `model(input_ids)` loop over the same windows.

Each repetition times both, alternating which goes first; the table shows medians and
ratio = plain time / perplexity() time (1.0 = no overhead; goal >= 0.95).

    python tests/benchmarks/bench_eval.py [--windows 16] [--seqlen 256] [--batch-size 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _bench import DATA_DIR, library_state  # noqa: E402  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.evaluation.perplexity import perplexity  # noqa: E402
from zprune_cli.evaluation.run import EvalPlan, Evaluation  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402

GOAL = 0.95


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="wikitext2")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--reps", type=int, default=5, help="repetitions (median is reported; at least 3 advised)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine, 2 threads stall on a busy core; 0 = torch's choice)")
    return p.parse_args(argv)


@torch.inference_mode()
def plain_loop(model, windows: torch.Tensor, batch_size: int) -> float:
    started = time.perf_counter()
    for first in range(0, windows.shape[0], batch_size):
        model(input_ids=windows[first : first + batch_size], use_cache=False)
    return time.perf_counter() - started


def ours(model, windows: torch.Tensor, batch_size: int) -> tuple[float, float]:
    started = time.perf_counter()
    result = perplexity(model, windows, batch_size)
    return time.perf_counter() - started, result.ppl


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"{library_state()}; {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs, "
          f"cuda available: {torch.cuda.is_available()}", flush=True)
    print(f"model {args.model}, {args.dataset}: {args.windows} windows x {args.seqlen} tokens, batch {args.batch_size}, "
          f"{args.reps} reps, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    started = time.perf_counter()
    handle = ModelHandle(args.model, device="cpu")
    model, tokenizer = handle.model, handle.tokenizer
    print(f"model loaded in {time.perf_counter() - started:.1f} s", flush=True)
    plan = EvalPlan(Evaluation(data=(args.dataset,), seqlen=args.seqlen, max_windows=args.windows), DATA_DIR)
    windows = plan.windows(plan.sources[0], tokenizer, args.seqlen)
    assert windows.shape[0] == args.windows, f"only {windows.shape[0]} windows available"

    # Warm-up, not timed: the first forward pass of a process is several times slower.
    plain_loop(model, windows[:2], 1)
    ours(model, windows[:2], 1)

    plain_t, ours_t, ppl = [], [], None
    for rep in range(args.reps):
        if rep % 2 == 0:
            plain_t.append(plain_loop(model, windows, args.batch_size))
            t, ppl = ours(model, windows, args.batch_size)
            ours_t.append(t)
        else:
            t, ppl = ours(model, windows, args.batch_size)
            ours_t.append(t)
            plain_t.append(plain_loop(model, windows, args.batch_size))
        print(f"rep {rep + 1}/{args.reps} (load avg {os.getloadavg()[0]:.2f}): plain {plain_t[-1]:.3f} s, perplexity() {ours_t[-1]:.3f} s", flush=True)

    n_tok = args.windows * args.seqlen
    p, o = statistics.median(plain_t), statistics.median(ours_t)
    print()
    print(f"{'loop':<30}{'median s':>10}{'min s':>9}{'max s':>9}{'tok/s':>9}")
    print(f"{'plain model(input_ids)':<30}{p:>10.3f}{min(plain_t):>9.3f}{max(plain_t):>9.3f}{n_tok / p:>9.0f}")
    print(f"{'perplexity()':<30}{o:>10.3f}{min(ours_t):>9.3f}{max(ours_t):>9.3f}{n_tok / o:>9.0f}")
    print()
    ratio = p / o
    per_rep = [a / b for a, b in zip(plain_t, ours_t)]
    print(f"ratio plain / perplexity() : {ratio:.3f}  (per rep: {', '.join(f'{r:.3f}' for r in per_rep)})"
          f"   goal >= {GOAL}: {'MET' if ratio >= GOAL else 'MISSED'}")
    print(f"perplexity {ppl:.3f} ({args.dataset}, {args.windows} x {args.seqlen})")
    print(f"at the end: {library_state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
