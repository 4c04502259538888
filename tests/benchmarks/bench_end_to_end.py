"""Benchmark: whole `zprune prune` processes, this version against an older commit, side by side.

Each run is a fresh process with a fresh cache folder (so it calibrates), one torch thread, SmolLM2-135M,
C4 32 x 512 (seed 0), nothing saved (`--no-save`): what a user waits for from the command to the answer.
The runs alternate between the two versions, so machine noise hits both alike. The older commit is
checked out into a temporary git worktree and run from there.

    python tests/benchmarks/bench_end_to_end.py --baseline b2904b1
    python tests/benchmarks/bench_end_to_end.py --baseline b2904b1 --runs magnitude,five
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import C4, REPO, library_state

RUNS = {
    "magnitude": ["--method", "magnitude"],
    "wanda-pruned": ["--method", "wanda", "--propagate", "pruned"],
    "sparsegpt": ["--method", "sparsegpt"],
    "five": ["--method", "magnitude,wanda,ria,zpruner,sparsegpt"],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git commit to compare against")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    return p.parse_args(argv)


def timed(checkout: Path, flags: list[str], args: argparse.Namespace) -> float:
    """Wall seconds of one `python -m zprune_cli prune ...` run from `checkout`, in a fresh cache."""
    with tempfile.TemporaryDirectory(prefix="zprune-e2e-") as cache:
        env = {**os.environ, "ZPRUNE_HOME": cache, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(checkout)}
        command = [sys.executable, "-m", "zprune_cli", "prune", "smollm2-135m", *flags, "--data", str(C4),
                   "-n", str(args.nsamples), "-l", str(args.seqlen), "--no-save", "--quiet", "--json"]
        started = time.perf_counter()
        subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def main(argv=None) -> None:
    args = parse_args(argv)
    names = args.runs.split(",")
    old = Path(tempfile.mkdtemp(prefix="zprune-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline], cwd=REPO, check=True,
                   capture_output=True)
    print(f"{library_state()} against {args.baseline}; C4 {args.nsamples} x {args.seqlen}, 1 thread", flush=True)
    try:
        rows = []
        for i, name in enumerate(names):
            order = [("new", REPO), ("old", old)] if i % 2 == 0 else [("old", old), ("new", REPO)]
            seconds = {label: timed(checkout, RUNS[name], args) for label, checkout in order}
            rows.append((name, seconds["old"], seconds["new"]))
            print(f"{name:>13}: {args.baseline} {seconds['old']:.0f} s, now {seconds['new']:.0f} s "
                  f"({seconds['old'] / seconds['new']:.2f}x faster)", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
        shutil.rmtree(old, ignore_errors=True)
    print("\n| run | " + args.baseline + " | now | speed-up |\n|---|---|---|---|")
    for name, before, after in rows:
        print(f"| {name} | {before:.0f} s | {after:.0f} s | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
