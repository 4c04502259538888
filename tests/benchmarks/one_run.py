"""One published table, one run at one commit: what leaderboard.py and publish.py check before writing.

A cell records the commit of the code that measured it (`commit`: the last commit that changed the measured
files, so a commit of results or benchmark prose during a run does not split it), the torch thread count and
the library versions. A table (one model's cells) whose cells come from two commits mixes two versions of the code, so
leaderboard.py refuses to add cells of another commit (or of a tree with local changes to the measured code)
to it, and publish.py refuses to render it. Cells written before cells recorded their commit take it from
their run's record ("zprune_cli at 991b747"). No zprune or torch import: tests load this module cheaply.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# what a number depends on: the library, its grids and its pinned dependencies
MEASURED = ("zprune_cli", "zprune.toml", "pyproject.toml")
NEW_RUN = ("a new commit starts a new run: give --results a new file (or move leaderboard.json aside), "
           "run the grids, and --check the old file's cells at the new commit")


@dataclass(frozen=True)
class TreeState:
    commit: str | None  # the last commit changing the measured files (short); None outside a git checkout
    changed: tuple[str, ...]  # measured files with local changes (untracked ones included)


def tree_state(repo: Path) -> TreeState:
    """The commit of the measured code and the measured files that differ from it."""
    try:
        head = _git(repo, "log", "-1", "--format=%h", "--", *MEASURED).strip() or _git(repo, "rev-parse", "--short", "HEAD").strip()
        status = _git(repo, "status", "--porcelain", "--", *MEASURED)
    except (OSError, subprocess.CalledProcessError):
        return TreeState(None, ())
    return TreeState(head, tuple(line[3:] for line in status.splitlines() if line.strip()))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def environment(commit: str | None, threads: int) -> dict:
    """What a cell records of the run that measured it: the code, the threads, the libraries and the processor
    (float sums differ in their last digits between processors: the machines of a run's sittings may differ)."""
    versions = {}
    for name in ("torch", "transformers", "lm_eval"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"commit": commit, "threads": threads, "versions": versions, "cpu": cpu_kind()}


def cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The processor's model name and widest vector extension, which choose the math libraries' kernels."""
    try:
        fields = dict(line.split(":", 1) for line in cpuinfo.read_text().splitlines() if ":" in line)
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "no avx")
    return f"{fields.get('model name', 'unknown processor')} ({vector})"


def version_refusal(board: dict, models: list[str], versions: dict) -> str | None:
    """Why cells of `models` measured with `versions` may not join `board` (None: they may): a table is measured
    with one set of libraries, and a new machine's venv may have installed newer ones."""
    for cell in board.get("cells", []):
        theirs = cell.get("versions")
        if cell["model"] in models and theirs and theirs != versions:
            wanted = " ".join(f"{name}=={v}" for name, v in sorted(theirs.items()) if v and v != versions.get(name))
            return (f"the {cell['model']} table was measured with other library versions ({wanted}): "
                    f"install them (pip install {wanted}) or start a new run")
    return None


def cell_commit(cell: dict, runs: list[dict]) -> str | None:
    """The commit a cell was measured at: its own record, else its run's ("zprune_cli at 991b747")."""
    if cell.get("commit"):
        return cell["commit"]
    for run in runs:
        if (run.get("model"), run.get("grid")) == (cell.get("model"), cell.get("grid")):
            match = re.search(r"at ([0-9a-f]{7,40})", run.get("library") or "")
            return match.group(1) if match else None
    return None


def table_commits(board: dict) -> dict[str, list[str]]:
    """model -> the commits its cells were measured at (unknown ones as '?'), sorted."""
    out: dict[str, set[str]] = {}
    for cell in board.get("cells", []):
        out.setdefault(cell["model"], set()).add(cell_commit(cell, board.get("runs", [])) or "?")
    return {model: sorted(commits) for model, commits in out.items()}


def mixed_tables(board: dict) -> list[str]:
    """One line per table whose cells come from more than one commit (or from an unknown one)."""
    return [f"{model}: cells from commits {', '.join(commits)}" for model, commits in table_commits(board).items()
            if len(commits) > 1 or commits == ["?"]]


def refusal(board: dict, models: list[str], state: TreeState) -> str | None:
    """Why cells of `models` measured in this tree may not go into `board` (None: they may)."""
    if state.commit is None:
        return "the leaderboard runs from a git checkout: a cell records the commit that measured it"
    if state.changed:
        return (f"the measured code has local changes ({', '.join(state.changed[:3])}"
                f"{', ...' if len(state.changed) > 3 else ''}): commit them first, so every cell names its code")
    commits = table_commits(board)
    for model in models:
        others = [c for c in commits.get(model, []) if c != state.commit]
        if others:
            return f"the {model} table holds cells from commit {', '.join(others)}, this tree is at {state.commit}: {NEW_RUN}"
    return None


CACHE_COMMIT = "leaderboard-commit"  # in the cache folder: the commit whose cells its results store holds


def cache_refusal(cache: Path, state: TreeState) -> str | None:
    """Why this tree may not resume from `cache` (None: it may). compare reuses a cell found in the results store
    without asking which code computed it, so a cache filled at another commit would hand its cells to this run,
    stamped with this commit."""
    marker = cache / CACHE_COMMIT
    held = marker.read_text().strip() if marker.exists() else None
    if held is None and (cache / "results.sqlite").exists():
        return f"the cache {cache} holds cells of an unrecorded commit: give --cache a new folder"
    if held not in (None, state.commit):
        return f"the cache {cache} holds cells measured at commit {held}, this tree is at {state.commit}: give --cache a new folder"
    return None


def bind_cache(cache: Path, state: TreeState) -> None:
    """Record the commit whose cells `cache` will hold (after cache_refusal said None)."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / CACHE_COMMIT).write_text(f"{state.commit}\n")

