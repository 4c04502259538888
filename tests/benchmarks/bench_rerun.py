"""Benchmark: a `compare` re-run whose every cell is in the results store (what a user types again).

The grid (dense + magnitude and Wanda at 50% on SmolLM2-135M, calibration 4 x 128 of C4, wikitext-2 4 x 256)
is computed once in a fresh cache, then the same command runs three more times, each a new process:
wall and CPU seconds, the load average, and which heavy libraries it imported (`python -X importtime`).

    python tests/benchmarks/bench_rerun.py [--model smollm2-135m] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from _bench import C4, DATA_DIR, REPO, library_state  # noqa: E402  (sets offline env first)

HEAVY = ("torch", "transformers", "gguf", "lm_eval", "datasets", "tokenizers", "pandas", "pyarrow", "matplotlib")


def grid(model: str) -> list[str]:
    return [sys.executable, "-m", "zprune_cli", "compare", model, "--method", "magnitude,wanda", "--sparsity", "0.5",
            "--data", str(C4), "-n", "4", "-l", "128", "--eval", "wikitext2", "--eval-seqlen", "256", "--max-windows", "4",
            "--data-dir", str(DATA_DIR), "-q"]


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its last stdout line)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout.strip().splitlines()[-1]


def imported(command: list[str], env: dict) -> list[str]:
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], env=env, capture_output=True, text=True, cwd=REPO)
    names = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    env = {**os.environ, "ZPRUNE_HOME": tempfile.mkdtemp(prefix="zprune-bench-rerun-"), "PYTHONPATH": str(REPO)}
    command = grid(args.model)
    print(library_state())
    wall, cpu, summary = timed(command, env)
    print(f"first run: {wall:.1f} s wall, {cpu:.1f} s CPU: {summary}")
    for run in range(1, args.runs + 1):
        load = os.getloadavg()[0]
        wall, cpu, summary = timed(command, env)
        print(f"re-run {run}: {wall:.2f} s wall, {cpu:.2f} s CPU (load average {load:.2f} on {os.cpu_count()} cores): {summary}")
    print(f"a re-run imports: {', '.join(imported(command, env))}")


if __name__ == "__main__":
    main()
