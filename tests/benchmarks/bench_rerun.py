"""Benchmark: a `compare` re-run whose every cell is in the results store (what a user types again).

The grid (dense + magnitude and Wanda at 50% on SmolLM2-135M, calibration 4 x 128 of C4, wikitext-2 4 x 256)
is computed once in a fresh cache, then the same command runs again `--runs` times, each a new process: wall
and CPU seconds, the load average, and which heavy libraries it imported. With `--against REV` the zprune of
that commit (a temporary git worktree) re-runs the same cached grid in turn with this one, so the two are
timed side by side under the same load.

    python tests/benchmarks/bench_rerun.py [--model smollm2-135m] [--runs 3] [--against 9005ce1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _bench import C4, DATA_DIR, REPO, library_state  # noqa: E402  (sets offline env first)
from peak_memory import RUN_ZPRUNE_MODULES  # noqa: E402  (tests/, on the path from _bench)

HEAVY = ("torch", "transformers", "gguf", "lm_eval", "datasets", "tokenizers", "pandas", "pyarrow", "matplotlib", "scipy", "numpy")


def grid(model: str) -> list[str]:
    return [sys.executable, "-m", "zprune_cli", "compare", model, "--method", "magnitude,wanda", "--sparsity", "0.5",
            "--data", str(C4), "-n", "4", "-l", "128", "--eval", "wikitext2", "--eval-seqlen", "256", "--max-windows", "4",
            "--data-dir", str(DATA_DIR), "-q"]


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its last stdout line). The child runs the zprune_cli of the
    folder env["PYTHONPATH"] names (its working folder too: `python -m` looks there first)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout.strip().splitlines()[-1]


def imported(command: list[str], env: dict) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, "modules.json")
        result = subprocess.run([command[0], "-c", RUN_ZPRUNE_MODULES, *command[3:]], env={**env, "MODULES_FILE": report},
                                capture_output=True, text=True, cwd=env["PYTHONPATH"])
        if result.returncode != 0 or not os.path.getsize(report):
            raise SystemExit(f"exit {result.returncode}: {result.stderr[-2000:]}")
        with open(report) as names:
            loaded = set(json.load(names))
    return [name for name in HEAVY if name in loaded]


@contextlib.contextmanager
def checkout(rev: str | None):
    """A worktree of `rev` (None: no baseline), removed afterwards."""
    if rev is None:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="zprune-bench-rerun-against-")
    subprocess.run(["git", "worktree", "add", "--detach", folder, rev], cwd=REPO, check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", folder], cwd=REPO, check=True, capture_output=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--against", help="a commit to time side by side with this checkout")
    args = p.parse_args(argv)
    env = {**os.environ, "ZPRUNE_HOME": tempfile.mkdtemp(prefix="zprune-bench-rerun-"), "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode compiled: time that
    command = grid(args.model)
    print(library_state())
    wall, cpu, summary = timed(command, env)
    print(f"first run: {wall:.1f} s wall, {cpu:.1f} s CPU: {summary}")
    with checkout(args.against) as baseline:
        sides = [("now", env)] + ([(args.against, {**env, "PYTHONPATH": baseline})] if baseline else [])
        for name, side_env in sides:
            timed(command, side_env)  # once untimed: writes the bytecode caches
        for run in range(1, args.runs + 1):
            for name, side_env in sides:
                load = os.getloadavg()[0]
                wall, cpu, summary = timed(command, side_env)
                print(f"re-run {run} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU (load average {load:.2f} on "
                      f"{os.cpu_count()} cores): {summary}")
        for name, side_env in sides:
            print(f"a re-run {name} imports: {', '.join(imported(command, side_env)) or 'none of them'}")


if __name__ == "__main__":
    main()
