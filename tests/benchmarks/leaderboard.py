"""The published leaderboard: SmolLM2-135M and Gemma-3-270M under the papers' protocol, one command.

Every number comes from `zprune compare --grid NAME` (the leaderboard-* grids of the repository's
zprune.toml) run as a subprocess, with the shared C4 shard as calibration data and ../shared/data for
wikitext-2 and the zero-shot sets. Cells go to the results store of one cache folder, so a killed run
resumes where it stopped; the merged cells, each run's wall time and its cells' own times go to
leaderboard.json next to this file.

    python tests/benchmarks/leaderboard.py                  # run (or resume) every model x grid
    python tests/benchmarks/leaderboard.py --publish        # README "Results", RESULTS.md section, PNG
    python tests/benchmarks/leaderboard.py --check --models smollm2-135m --grids leaderboard-dense --methods magnitude

    python tests/benchmarks/leaderboard.py --check --sample 0.2 --seed 0   # >= 20% of the cells, every kind
    python tests/benchmarks/leaderboard.py --windows 64 --results new.json  # a run at 64 windows per cell
    python tests/benchmarks/leaderboard.py --windows 64 --limit 200 --jobs 1 --results run.json --cache DIR \
        --progress progress.json.gz                         # the complete protocol (issue 21): about 25 core-hours

`--check` recomputes the chosen cells in a fresh cache and compares every perplexity and accuracy with the
committed leaderboard.json to 4 significant digits (exit 1 on a difference).

One table, one run at one commit (one_run.py): a run refuses (exit 2) a tree with local changes to the
measured code, a table that already holds cells of another commit, or a --cache whose results store another
commit filled (a resumed run reuses the cells it finds there); every cell records its commit, the
thread count and the library versions, and its per-window NLLs, from which the tables' intervals and the
rendered analysis's paired tests come. Nothing in leaderboard.json is edited by hand.

A run stopped part way resumes with the same command from its --cache (finished cells are in its results store;
a killed grid loses only the cell it was computing). Each invocation is a sitting whose measured wall time the
results file keeps (updated every minute), so the published run states the machine time it took in all.
On another machine, --progress carries the results rows (carry.py; the run in progress is kept in
leaderboard-progress/, whose README says how to resume it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from _bench import C4, DATA_DIR, REPO, library_state
from carry import file_records, restore_file_times, restore_progress, save_progress
from one_run import bind_cache, cache_refusal, cpu_kind, environment, refusal, tree_state, version_refusal
from publish import cell_key, differences
from sampling import KINDS, cell_flags, kinds_of, sample_cells

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "leaderboard.json"
MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}
RUNNING: set[subprocess.Popen] = set()  # the compare processes under way: ended with the leaderboard at SIGTERM
STOPPING = threading.Event()  # set at SIGTERM: no worker starts another compare
_children = threading.RLock()  # re-entrant: the handler runs in the main thread, which may hold it (warm_statistics)
THREADS = 1  # torch threads per compare process: one core each, no oversubscription, identical re-runs
GRIDS = ("leaderboard-dense", "leaderboard-pruned", "leaderboard-pruned-50", "leaderboard-owl", "leaderboard-gram",
         "leaderboard-best", "leaderboard-best-seed1", "leaderboard-best-seed2", "leaderboard-alps-seed1",
         "leaderboard-alps-seed2", "leaderboard-quant", "leaderboard-permute")
# The default run: every grid of the complete protocol (issue 21) on both models, the tables every reader looks
# at first, so that a run stopped part way has published the most: the dense, pruned and OWL rows, then the
# weight-updating methods and the best recipes with zero-shot, their other calibration seeds, then SmolLM2's
# joint quantization and permutation grids. --jobs workers take the next model x grid as they finish (list
# scheduling). A model's zero-shot grids share their dense row: the first computes it, the others read it.
# (leaderboard-pruned-50, Gemma's former share of the pruned grid, is a subset of leaderboard-pruned.)
SCHEDULE = tuple((model, grid) for grid in ("leaderboard-dense", "leaderboard-pruned", "leaderboard-owl", "leaderboard-gram",
                                            "leaderboard-best", "leaderboard-best-seed1", "leaderboard-best-seed2",
                                            "leaderboard-alps-seed1", "leaderboard-alps-seed2")
                 for model in ("smollm2-135m", "gemma3-270m")) + (
    ("smollm2-135m", "leaderboard-quant"), ("smollm2-135m", "leaderboard-permute"), ("gemma3-270m", "leaderboard-permute"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model aliases")
    p.add_argument("--grids", default=None, help="comma-separated grid names from zprune.toml (default: SCHEDULE's)")
    p.add_argument("--methods", default=None, help="only these methods of each grid (passed as --method)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "zprune-leaderboard",
                   help="cache folder holding the results store (the run resumes from it)")
    p.add_argument("--results", type=Path, default=RESULTS_JSON, help="the leaderboard's JSON file")
    p.add_argument("--progress", type=Path, default=None,
                   help="keep the cache's results rows in this file (every minute) and restore them into a new cache, "
                        "so a run resumes on another machine (carry.py)")
    p.add_argument("--jobs", type=int, default=2, help="grids run side by side (one compare process each)")
    p.add_argument("--windows", type=int, default=None,
                   help=f"perplexity windows of 512 tokens per cell (default: the grids', {WINDOWS}; 64 or more to rank)")
    p.add_argument("--limit", type=int, default=None,
                   help=f"zero-shot questions per task (default: the grids', {QUESTIONS}; the complete protocol: 200)")
    p.add_argument("--check", action="store_true", help="recompute in a fresh cache and compare to --results")
    p.add_argument("--sample", type=float, default=None,
                   help="with --check: re-run a seeded random sample of at least this fraction of the committed cells, "
                        "drawn within every kind (statistics, sparsegpt, alps, swaps + pcg, zero-shot)")
    p.add_argument("--seed", type=int, default=0, help="the --sample's seed")
    p.add_argument("--kinds", default=None, help=f"with --sample: only these kinds (comma-separated of {', '.join(KINDS)})")
    p.add_argument("--publish", action="store_true", help="write README / RESULTS.md / PNG from --results")
    return p.parse_args(argv)


# --- running the grids --------------------------------------------------------------------------------------


def run_grid(model: str, grid: str, cache: Path, narrow: list[str], windows: int | None = None,
             limit: int | None = None) -> dict:
    """One `zprune compare --grid` process (`narrow`: flags choosing part of the grid): its JSON outcome plus
    its wall time."""
    command = [sys.executable, "-m", "zprune_cli", "compare", model, "--grid", grid, "--data", str(C4),
               "--data-dir", str(DATA_DIR), "--cache-dir", str(cache), "--json", *narrow]
    if windows:
        command += ["--max-windows", str(windows)]
    if limit:  # only the zero-shot grids ask questions
        command += ["--limit", str(limit)]
    state = tree_state(REPO)  # the commit this process measures (checked against the table's in Board.merge)
    library = library_state()  # the code this process imports (HEAD may move during a long leaderboard)
    since = datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # the results store's time format
    started = time.perf_counter()
    out = run_checked(command)
    wall = time.perf_counter() - started
    return {**json.loads(out), "wall_seconds": round(wall, 1), "library": library, "state": state,
            "computed_here": computed_since(cache, model, since)}


def compare_env() -> dict:
    # float sums depend on how the work is split across threads: a fixed count keeps re-runs identical
    return {**os.environ, "ZPRUNE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def calibrations(jobs: list[tuple[str, str]]) -> list[tuple[str, int, int, int]]:
    """The (model, nsamples, seqlen, seed) calibrations the jobs' grids read, from REPO's zprune.toml."""
    grids = tomllib.loads((REPO / "zprune.toml").read_text())["grids"]
    return list(dict.fromkeys((model, grids[grid]["nsamples"], grids[grid]["seqlen"], grids[grid]["seed"])
                              for model, grid in jobs))


def warm_statistics(jobs: list[tuple[str, str]], cache: Path) -> None:
    """Store each calibration's block statistics before any grid runs. The measured code keys a results row by
    the store entry that served its calibration: pruned propagation, which asks for block 0's inputs only, is
    served by a full entry when one is there and by an inputs-only entry it makes otherwise. Which one was
    there depended on which of two grids side by side calibrated first, and a new machine's cache has neither:
    made first, the full entry serves every grid in every sitting, so a resumed grid finds its rows."""
    for model, nsamples, seqlen, seed in calibrations(jobs):
        command = [sys.executable, "-m", "zprune_cli", "calibrate", model, "--data", str(C4), "--data-dir", str(DATA_DIR),
                   "--cache-dir", str(cache), "-n", str(nsamples), "-l", str(seqlen), "--seed", str(seed), "--quiet"]
        run_checked(command)


def run_checked(command: list[str]) -> str:
    """A zprune process with the leaderboard's environment: its stdout, or SystemExit naming its failure."""
    code, out = run_child(command, compare_env())
    if code != 0:
        raise SystemExit(f"error: {' '.join(command[3:])} failed with exit code {code}")
    return out


def run_child(command: list[str], env: dict) -> tuple[int, str]:
    """One child process (compare, calibrate), known to the SIGTERM handler while it runs: (exit code, stdout)."""
    with _children:
        if STOPPING.is_set():
            raise SystemExit("error: the leaderboard is stopping")
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
        RUNNING.add(child)
    try:
        out, _ = child.communicate()
    finally:
        with _children:
            RUNNING.discard(child)
    return child.returncode, out


def end_at_sigterm(signum, frame) -> None:
    """SIGTERM ends the compare processes under way and then this one through SystemExit, so the sitting's
    `finally` records its last clock tick and progress (a plain SIGTERM would lose up to a minute of each)."""
    STOPPING.set()
    with _children:
        for child in RUNNING:
            child.terminate()
    raise SystemExit(128 + signum)


def computed_since(cache: Path, model: str, since: str) -> list[str]:
    """The recipes ("" for the dense row) whose rows for `model` reached the results store since `since`: the cells
    a compare process computed, told apart from those an earlier, killed process left there (whose times are not
    this process's, and whose machine may have been another)."""
    database = cache / "results.sqlite"
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60) as conn:
        rows = conn.execute("SELECT DISTINCT recipe FROM runs WHERE model = ? AND created >= ?", (model, since))
        return sorted({recipe or "" for (recipe,) in rows})


def model_files(models: list[str]) -> list[Path]:
    """The models' weights files as the measured code resolves them (in a subprocess in REPO, like compare: this
    script imports no zprune)."""
    code = ("import json, sys; from pathlib import Path; from zprune_cli.models.resolve import resolve_model; "
            "print(json.dumps([str(Path(s.location) / f[0]) for s in map(resolve_model, sys.argv[1:]) for f in s.weight_files]))")
    done = subprocess.run([sys.executable, "-c", code, *models], cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return [Path(p) for p in json.loads(done.stdout)]


def slim(row: dict, model: str, grid: str) -> dict:
    """A cell as leaderboard.json keeps it; `windows` (per-window NLLs) and `stderr` carry its evidence."""
    keep = ("method", "label", "pattern", "sparsity", "propagate", "recipe", "protocol", "metrics", "seconds",
            "windows", "stderr")
    return {"model": model, "grid": grid, **{k: row.get(k) for k in keep if k in row}}


class Refused(Exception):
    """Cells that may not go into the table asked for (one line, exit 2)."""


class Board:
    """The leaderboard being built: cells by key and the latest computing run per model x grid, saved
    to `path` after every grid (so a killed run keeps what finished). Models run in parallel threads."""

    def __init__(self, board: dict, path: Path | None, recorded: dict | None = None):
        self.cells = {cell_key(c): c for c in board.get("cells", [])}
        self.runs = list(board.get("runs", []))
        self.path = path
        self.lock = threading.Lock()
        self.protocol = board.get("protocol", PROTOCOL)
        self.recorded = recorded  # environment(): the commit, threads and versions every new cell records
        self.sittings = list(board.get("sittings", []))  # each leaderboard.py invocation: its measured wall time

    def merge(self, model: str, grid: str, outcome: dict) -> dict:
        """Takes one compare outcome; returns its run (fresh cells: new, or with new times)."""
        with self.lock:
            state = outcome.get("state")
            if self.recorded and state is not None and (state.commit, state.changed) != (self.recorded["commit"], ()):
                raise Refused(f"{model} {grid} ran at {state.commit}{' with local changes' if state.changed else ''}, "
                              f"the run started at {self.recorded['commit']}: HEAD moved during the run; start a new one")
            fresh = []
            # the outcome's rows are its whole protocol group: another grid's cells (run beside it) stay theirs
            mine = outcome.get("recipes")  # absent from the JSON of a zprune older than this field: all rows
            own = [r for r in outcome["rows"] if mine is None or r["method"] == "dense" or r["recipe"] in mine]
            here = outcome.get("computed_here")  # absent: told by the times changing
            for row in own:
                key = cell_key({**row, "model": model})
                old = self.cells.get(key)
                changed = old is None or (old.get("seconds") or {}) != (row.get("seconds") or {})
                measured_here = changed if here is None else (row.get("recipe") or "") in here
                if measured_here:
                    fresh.append(row)
                    self.cells[key] = {**slim(row, model, old["grid"] if old else grid), **(self.recorded or {})}
                elif old is None:  # left in the store by an earlier sitting's killed process: its machine unknown
                    self.cells[key] = {**slim(row, model, grid), **(self.recorded or {})}
                    if self.recorded:
                        self.cells[key]["cpu"] = None
                # a cell found in the board keeps the record of the sitting (and machine) that measured it
            run = describe_run(model, grid, outcome, fresh)
            if run["computed"] or not any((r["model"], r["grid"]) == (model, grid) for r in self.runs):
                self.runs = [r for r in self.runs if (r["model"], r["grid"]) != (model, grid)] + [run]
            self._save()
            return run

    def _save(self) -> None:
        """Write the file whole or not at all (it is rewritten every minute: a kill mid-write must not cost it)."""
        if self.path:
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(self.data(), indent=1) + "\n")
            os.replace(partial, self.path)

    def clock(self, sitting: dict, started: float, finished: bool = False) -> None:
        """Record `sitting`'s wall time so far (a sitting killed outright loses only the time since)."""
        with self.lock:
            sitting.update(wall_seconds=round(time.perf_counter() - started, 1), finished=finished)
            self._save()

    def data(self) -> dict:
        runs = sorted(self.runs, key=lambda r: (r["model"], GRIDS.index(r["grid"]) if r["grid"] in GRIDS else 99))
        libraries = sorted({r.get("library", "unknown") for r in runs})
        return {"library": ", ".join(libraries), "protocol": self.protocol, "schedule": [list(job) for job in SCHEDULE], "runs": runs,
                **({"sittings": self.sittings} if self.sittings else {}), "cells": sorted(self.cells.values(), key=order)}


def run_all(args: argparse.Namespace, cache: Path, board: Board, jobs: list[tuple[str, str, list[str]]] | None = None) -> dict:
    """The chosen model x grid runs (or `jobs`: model, grid, narrowing flags), `--jobs` at a time, in schedule
    order (each compare process has THREADS threads)."""
    narrow = ["--method", args.methods] if args.methods else []
    if jobs is None:
        warm_statistics(schedule(args), cache)
    queue = iter(jobs if jobs is not None else [(model, grid, narrow) for model, grid in schedule(args)])
    lock = threading.Lock()

    def worker() -> None:
        while not STOPPING.is_set():
            with lock:
                job = next(queue, None)
            if job is None:
                return
            model, grid, flags = job
            run = board.merge(model, grid, run_grid(model, grid, cache, flags, args.windows, args.limit))
            print(summary_line(run), flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in [pool.submit(worker) for _ in range(args.jobs)]:
            done.result()
    return board.data()


def schedule(args: argparse.Namespace) -> list[tuple[str, str]]:
    """SCHEDULE's runs of the chosen models, or every chosen model x every chosen grid."""
    models = args.models.split(",")
    if args.grids:
        return [(m, g) for m in models for g in args.grids.split(",")]
    return [(m, g) for m, g in SCHEDULE if m in models]


def describe_run(model: str, grid: str, outcome: dict, fresh: list[dict]) -> dict:
    """A run's wall time against the sum of its freshly computed cells' prune and evaluation times."""
    inside = sum((r.get("seconds") or {}).get("prune", 0) + (r.get("seconds") or {}).get("evaluate", 0) for r in fresh)
    return {"model": model, "grid": grid, "library": outcome.get("library", "unknown"), "computed": outcome["computed"],
            "skipped": outcome["skipped"],
            "wall_seconds": outcome["wall_seconds"], "cells_seconds": round(inside, 1),
            "overhead": round(outcome["wall_seconds"] / inside, 3) if inside else None}


def summary_line(run: dict) -> str:
    ratio = f", overhead {run['overhead']:.2f}x" if run["overhead"] else ""
    return (f"{run['model']} {run['grid']}: {run['computed']} computed, {run['skipped']} stored, "
            f"wall {run['wall_seconds']:.0f} s, cells {run['cells_seconds']:.0f} s{ratio}")


PATTERN_ORDER = {"": 0, "unstructured": 1, "2:4": 2, "4:8": 3}


def order(cell: dict):
    return (cell["model"], cell["protocol"], PATTERN_ORDER.get(cell["pattern"], 9), cell["sparsity"] or 0,
            cell["label"], cell["propagate"] or "")


WINDOWS = 16  # max_windows of the leaderboard grids in zprune.toml; --windows replaces it


QUESTIONS = 50  # limit of the leaderboard's zero-shot grids in zprune.toml; --limit replaces it


def protocol(windows: int | None, limit: int | None = None) -> dict:
    return {**PROTOCOL, "perplexity": f"wikitext-2 test, windows of 512 tokens, the first {windows or WINDOWS}"
            + ("" if windows else " (max_windows in zprune.toml)"),
            "zero-shot": f"the first {limit or QUESTIONS} questions of each of six sets"
            + ("" if limit else " (limit in zprune.toml)") + ", lm-eval acc and acc_norm, 0-shot",
            "zero-shot questions": limit or QUESTIONS}


PROTOCOL = {"calibration": f"C4 ({C4.name}), 32 windows x 512 tokens, seed 0",
            "perplexity": f"wikitext-2 test, windows of 512 tokens, the first {WINDOWS} (max_windows in zprune.toml)",
            "zero-shot": "the first 50 questions of each of six sets (limit in zprune.toml), lm-eval acc and acc_norm, 0-shot",
            "zero-shot questions": 50,
            "dtype": "float32", "device": "cpu", "threads": THREADS}


# --- checking a re-run ----------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    committed = json.loads(args.results.read_text())
    jobs, chosen = None, []
    if args.sample is not None:
        models = args.models.split(",")
        kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
        try:
            chosen = sample_cells([c for c in committed["cells"] if c["model"] in models], args.sample, args.seed, kinds)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        jobs = [(c["model"], c["grid"], cell_flags(c)) for c in chosen]
        counts = {kind: sum(kind in kinds_of(c) for c in chosen) for kind in kinds}
        print(f"sample (seed {args.seed}): {len(chosen)} cells; " + ", ".join(f"{k} {n}" for k, n in counts.items() if n), flush=True)
    with tempfile.TemporaryDirectory(prefix="zprune-leaderboard-check-") as cache:
        fresh = run_all(args, Path(cache), Board({}, None), jobs)
    measured = {cell_key(c) for c in fresh["cells"]}
    bad = differences(fresh, committed, cpu_kind()) + [f"{c['model']} {c['label']}: sampled but not measured again"
                                           for c in chosen if cell_key(c) not in measured]
    compared = sum(1 for c in fresh["cells"] for m in c["metrics"] if m.startswith(("ppl:", "acc:", "acc_norm:")))
    for line in bad:
        print(line)
    print(f"{compared - len(bad)} of {compared} perplexities and accuracies equal the committed ones to 4 significant digits")
    return 1 if bad else 0


def run_in_sitting(args: argparse.Namespace, board: Board, files: list[dict] | None = None) -> float:
    """run_all as one sitting of the leaderboard: its measured wall time recorded in the board every minute and at
    the end, so a run resumed over several sittings states the machine time it took; --progress keeps the results
    rows and `files` (the model files' records). Returns the wall time."""
    started = time.perf_counter()
    sitting = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "jobs": args.jobs, "wall_seconds": 0.0,
               "cpu": (board.recorded or {}).get("cpu")}
    board.sittings.append(sitting)
    stop = threading.Event()

    def keep() -> int:
        if args.progress:
            try:
                return save_progress(args.cache, args.progress, board.recorded["commit"], files)
            except (OSError, sqlite3.Error) as exc:  # a busy or full disk must not stop the sitting's clock
                print(f"warning: progress not saved to {args.progress}: {exc}", file=sys.stderr, flush=True)
        return 0

    def tick() -> None:
        while not stop.wait(60):
            board.clock(sitting, started)
            keep()

    threading.Thread(target=tick, daemon=True).start()
    try:
        run_all(args, args.cache, board)
        board.clock(sitting, started, finished=True)
    finally:
        stop.set()
        if not sitting.get("finished"):
            board.clock(sitting, started)
        if saved := keep():
            print(f"sitting: {sitting['wall_seconds']:.0f} s; {saved} results rows saved to {args.progress}", flush=True)
    return time.perf_counter() - started


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check:
        return check(args)
    if args.publish:
        from publish import MixedCommits, publish

        try:
            publish(json.loads(args.results.read_text()))
        except MixedCommits as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    existing = json.loads(args.results.read_text()) if args.results.exists() else {}
    state = tree_state(REPO)
    models = sorted({model for model, _ in schedule(args)})
    recorded = environment(state.commit, THREADS)
    refused = (refusal(existing, models, state) or version_refusal(existing, models, recorded["versions"])
               or cache_refusal(args.cache, state))
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    bind_cache(args.cache, state)
    try:
        restored = restore_progress(args.progress, args.cache, state.commit) if args.progress else 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if restored:
        print(f"restored {restored} results rows from {args.progress}", flush=True)
    files = None
    if args.progress:
        paths = model_files(models)  # first: resolving a model may assemble its file (Gemma's package does)
        for line in restore_file_times(args.progress):
            print(line, flush=True)
        files = file_records(paths)
    board = Board(existing, args.results, recorded)
    board.protocol = protocol(args.windows, args.limit)
    try:
        wall = run_in_sitting(args, board, files)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    board = board.data()
    if not existing.get("cells"):  # a fresh file filled by this one invocation: its wall time is the leaderboard's
        board["wall_seconds"] = round(wall, 1)
        args.results.write_text(json.dumps(board, indent=1) + "\n")
    print(f"leaderboard: {len(board['cells'])} cells in {args.results}, this run {wall:.0f} s")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, end_at_sigterm)
    sys.exit(main())
