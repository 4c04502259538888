"""Benchmark: `calibrate` against a plain forward pass over the same tokens, in one run.

Each repetition runs, in a rotating order so that drift on a noisy machine hits every variant alike:
  plain  -- `model(windows[i:i+1])` for every calibration window, no hooks (the floor);
  norms  -- `calibrate(..., gram=False)` into a fresh, empty cache (a miss);
  gram   -- `calibrate(..., gram=True)` into another fresh cache (a miss);
then, right after each miss, the same call again (a hit: the model is already loaded).
The table shows medians over the repetitions and the ratios to the plain forward pass.

    python tests/benchmarks/bench_calibrate.py [--nsamples 16] [--seqlen 256] [--reps 3]
"""

from __future__ import annotations

import argparse
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
from zprune_cli.data.sources import resolve_source  # noqa: E402
from zprune_cli.data.windows import calibration_windows  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402


GOAL_NORMS = 1.2  # calibrate without Gram matrices <= 1.2x a plain forward pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(C4), help="calibration text (default: the shared C4 shard)")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3, help="repetitions (median is reported; at least 3 advised)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine, 2 threads stall on a busy core; 0 = torch's choice)")
    return p.parse_args(argv)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


@torch.inference_mode()
def plain_forward(model, windows: torch.Tensor) -> float:
    started = time.perf_counter()
    for i in range(windows.shape[0]):
        model(windows[i : i + 1])
    return time.perf_counter() - started


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="zprune-bench-cal-"))
    try:
        return run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args, root: Path) -> int:
    print(f"{library_state()}; {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs, "
          f"cuda available: {torch.cuda.is_available()}", flush=True)
    print(f"model {args.model}, {args.nsamples} windows x {args.seqlen} tokens, {args.reps} reps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    started = time.perf_counter()
    handle = ModelHandle(args.model, device="cpu")
    model, tokenizer = handle.model, handle.tokenizer
    print(f"model loaded in {time.perf_counter() - started:.1f} s", flush=True)

    text = resolve_source(args.data, "train", DATA_DIR)
    loaded = text.load()
    t0 = time.perf_counter()
    windows = calibration_windows(loaded, tokenizer, args.nsamples, args.seqlen, args.seed)
    tokenise_s = time.perf_counter() - t0

    # Warm-up, not timed: the first forward pass of a process is several times slower (allocator,
    # kernels), and the first calibrate pays one-off imports.
    plain_forward(model, windows[:2])
    calibrate(handle, Calibration(args.data, 2, args.seqlen, args.seed),
              settings=Settings(cache_dir=root / "warmup", data_dir=DATA_DIR, device="cpu"))

    calibration = Calibration(data=args.data, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    times: dict[str, list[float]] = {k: [] for k in ("plain", "norms", "gram", "norms_hit", "gram_hit")}
    sizes = {}
    variants = ["plain", "norms", "gram"]
    for rep in range(args.reps):
        order = variants[rep % 3 :] + variants[: rep % 3]
        for variant in order:
            if variant == "plain":
                times["plain"].append(plain_forward(model, windows))
                continue
            cache = root / f"{variant}-{rep}"
            settings = Settings(cache_dir=cache, data_dir=DATA_DIR, device="cpu")
            gram = variant == "gram"
            miss = calibrate(handle, calibration, gram=gram, settings=settings)
            assert not miss.hit
            hit = calibrate(handle, calibration, gram=gram, settings=settings)
            assert hit.hit and hit.key == miss.key
            times[variant].append(miss.seconds)
            times[f"{variant}_hit"].append(hit.seconds)
            sizes[variant] = miss.size_bytes
            if rep == 0 and variant == "norms":
                stored_ids, _ = miss.entry.inputs()
                assert torch.equal(stored_ids, windows), "plain forward must see the calibration tokens"
            shutil.rmtree(cache, ignore_errors=True)
        print(f"rep {rep + 1}/{args.reps} (load avg {os.getloadavg()[0]:.2f}): " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)

    plain = median(times["plain"])
    norms, gram = median(times["norms"]), median(times["gram"])
    n_tok = args.nsamples * args.seqlen
    print()
    print(f"{'variant':<34}{'median s':>10}{'min s':>9}{'max s':>9}{'x plain':>9}{'tok/s':>9}")
    rows = [
        ("plain forward (no hooks)", "plain", plain),
        ("calibrate, norms only (miss)", "norms", plain),
        ("calibrate, gram=True (miss)", "gram", plain),
    ]
    for label, key, base in rows:
        xs = times[key]
        print(f"{label:<34}{median(xs):>10.3f}{min(xs):>9.3f}{max(xs):>9.3f}{median(xs) / base:>9.2f}{n_tok / median(xs):>9.0f}")
    print(f"{'cache hit, norms (model loaded)':<34}{median(times['norms_hit']):>10.4f}{min(times['norms_hit']):>9.4f}"
          f"{max(times['norms_hit']):>9.4f}")
    print(f"{'cache hit, gram (model loaded)':<34}{median(times['gram_hit']):>10.4f}{min(times['gram_hit']):>9.4f}"
          f"{max(times['gram_hit']):>9.4f}")
    print()
    ratio_norms = norms / plain
    # Per-rep ratios too: each rep's calibrate over the same rep's plain pass.
    per_rep = [n / p for n, p in zip(times["norms"], times["plain"])]
    print(f"calibrate (norms) / plain forward : {ratio_norms:.2f}x  (per rep: {', '.join(f'{r:.2f}' for r in per_rep)})"
          f"   goal <= {GOAL_NORMS}x: {'MET' if ratio_norms <= GOAL_NORMS else 'MISSED'}")
    per_rep_g = [g / p for g, p in zip(times["gram"], times["plain"])]
    print(f"calibrate (gram)  / plain forward : {gram / plain:.2f}x  (per rep: {', '.join(f'{r:.2f}' for r in per_rep_g)})")
    print(f"gram / norms                      : {gram / norms:.2f}x")
    print(f"cache hit / miss (norms)          : {median(times['norms_hit']) / norms:.4f}")
    print(f"cache hit / miss (gram)           : {median(times['gram_hit']) / gram:.4f}")
    print(f"tokenising the windows (in calibrate's miss time): {tokenise_s:.3f} s = {tokenise_s / plain:.2f}x plain")
    print(f"store entry size: norms {sizes['norms'] / 2**20:.1f} MiB, gram {sizes['gram'] / 2**20:.1f} MiB")
    print(f"at the end: {library_state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
