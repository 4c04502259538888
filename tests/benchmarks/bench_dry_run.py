"""Benchmark: `--dry-run` estimates against the measured peak memory and store size of the real runs.

For each command (a cold `calibrate`, then a cold `prune` that calibrates first and saves), in a fresh
cache: `zprune ... --dry-run --json` in one process (its wall time and the estimate), then the real
command in another, whose peak resident memory comes from the kernel (its own VmHWM, read at exit). A third process that only imports torch, transformers and zprune gives the floor every
run pays before its first tensor; the table shows the totals and the parts above that floor.

    python tests/benchmarks/bench_dry_run.py [--model smollm2-135m] [--nsamples 32] [--seqlen 512]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import HWM, REPO, RUN_ZPRUNE, library_state  # noqa: E402  (sets offline env first)

sys.path.insert(0, str(REPO))  # this checkout's zprune, also in the child processes (PYTHONPATH below)

from zprune_cli.estimation.memory import IMPORTS_BYTES  # noqa: E402

MiB = 1 << 20
IMPORTS = "import torch, transformers, zprune_cli.cli.app, zprune_cli.verbs.pruning, zprune_cli.verbs.comparison"
GOAL = 0.20  # estimates within 20% of the measured peaks


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="c4-sample")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--method", default="wanda")
    return p.parse_args(argv)




def run(code: str, args: list[str], env: dict) -> tuple[int, float, str]:
    """(peak resident bytes, wall seconds, stdout) of one process."""
    hwm = Path(env["PWD"]) / "hwm"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *args], env={**env, "HWM_FILE": str(hwm)}, cwd=env["PWD"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"zprune {' '.join(args)} failed with exit {result.returncode}: {result.stderr[-1000:]}")
    return int(hwm.read_text()) * 1024, time.perf_counter() - started, result.stdout


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zprune-bench-dry-"))
    env = {**os.environ, "ZPRUNE_HOME": str(work / "cache"), "PWD": str(work), "PYTHONPATH": str(REPO),
           "ZPRUNE_NO_PROGRESS": "1"}
    common = ["--data", args.data, "-n", str(args.nsamples), "-l", str(args.seqlen), "--device", "cpu"]
    commands = {"calibrate": ["calibrate", args.model, *common],
                "prune": ["prune", args.model, "--method", args.method, *common, "--out", str(work / "out")]}
    floor, _, _ = run(HWM + IMPORTS, [], env)
    print(f"# {library_state()}; {args.model}, {args.data}, {args.nsamples} x {args.seqlen}, device cpu")
    print(f"# floor (python + torch + transformers + zprune imported): {floor / MiB:.0f} MiB measured, "
          f"{IMPORTS_BYTES / MiB:.0f} MiB assumed by the estimate")
    print("| command | dry-run wall | run wall | est. peak | measured peak | error | est. above floor | measured above floor "
          "| error | est. store | measured store | est. output | measured output |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, argv_cmd in commands.items():
        shutil.rmtree(work / "cache", ignore_errors=True)
        shutil.rmtree(work / "out", ignore_errors=True)
        _, dry_wall, text = run(RUN_ZPRUNE, [*argv_cmd, "--dry-run", "--json"], env)
        est = json.loads(text)
        peak, wall, _ = run(RUN_ZPRUNE, argv_cmd, env)
        store, output = _size(work / "cache" / "stats"), _size(work / "out")
        above_est, above = est["host_peak_bytes"] - IMPORTS_BYTES, peak - floor
        print(f"| {name} | {dry_wall:.1f} s | {wall:.1f} s | {est['host_peak_bytes'] / MiB:.0f} MiB | {peak / MiB:.0f} MiB "
              f"| {est['host_peak_bytes'] / peak - 1:+.1%} | {above_est / MiB:.0f} MiB | {above / MiB:.0f} MiB "
              f"| {above_est / above - 1:+.1%} | {est['store_bytes'] / MiB:.1f} MiB | {store / MiB:.1f} MiB "
              f"| {est['output_bytes'] / MiB:.1f} MiB | {output / MiB:.1f} MiB |")
        print(f"#   {name}: peak while {est['peak_step']}: " +
              ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in est["peak_parts"].items()))
    shutil.rmtree(work, ignore_errors=True)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


if __name__ == "__main__":
    main()
