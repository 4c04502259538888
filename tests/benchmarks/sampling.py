"""Which committed cells `leaderboard.py --check --sample F --seed N` re-runs: a seeded random sample of at
least F of the cells, drawn within every kind present, so no kind of code (score methods on cached
statistics, SparseGPT, ALPS, swaps + PCG, zero-shot) goes unchecked. Pure: no zprune or torch import."""

from __future__ import annotations

import math
import random

KINDS = ("statistics", "sparsegpt", "alps", "swaps + pcg", "zero-shot")


def kinds_of(cell: dict) -> set[str]:
    """The kinds of code a cell exercises: its pruning (statistics, sparsegpt, alps, swaps + pcg) and
    zero-shot when it has accuracies. The dense row has none (every re-run of a grid measures it anyway)."""
    if cell["method"] == "dense":
        return set()
    if cell["method"] in ("sparsegpt", "alps"):
        kinds = {cell["method"]}
    else:
        kinds = {"swaps + pcg" if "swaps" in cell["label"] or "pcg" in cell["label"] else "statistics"}
    return kinds | ({"zero-shot"} if any(m.startswith("acc:") for m in cell["metrics"]) else set())


def sample_cells(cells: list[dict], fraction: float, seed: int, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """At least ceil(fraction x the cells of `kinds`) cells, covering every kind present, drawn with
    random.Random(seed): the same arguments give the same sample, in the cells' order. A cell counts when
    every kind it exercises is asked for (--kinds statistics leaves out the zero-shot cells)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--sample must be a fraction in (0, 1], got {fraction}")
    pool = [c for c in cells if kinds_of(c) and kinds_of(c) <= set(kinds)]
    rng = random.Random(seed)
    chosen: set[int] = set()
    for kind in sorted({k for c in pool for k in kinds_of(c)}):
        if not any(kind in kinds_of(pool[i]) for i in chosen):
            chosen.add(rng.choice([i for i, c in enumerate(pool) if kind in kinds_of(c)]))
    rest = [i for i in range(len(pool)) if i not in chosen]
    rng.shuffle(rest)
    chosen |= set(rest[: max(0, math.ceil(fraction * len(pool)) - len(chosen))])
    return [pool[i] for i in sorted(chosen)]


def cell_flags(cell: dict) -> list[str]:
    """The `zprune compare --grid` flags that narrow the cell's grid to the cell (and its dense row)."""
    return ["--method", cell["method"], "--sparsity", f"{cell['sparsity']:g}", "--pattern", cell["pattern"]]
