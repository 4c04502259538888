"""The leaderboard as text cells, shared by every rendering (terminal table, markdown, csv, html): which
columns there are, how a value is written (with its 95% interval where the windows or a standard error were
stored), and which metric cells are the best of their sparsity and pattern or tied with it.

Rows are `comparison.leaderboard` rows: `LeaderboardRow`.
"""

from __future__ import annotations

from typing import TypedDict

HEAD = ["model", "method", "pattern", "target", "propagate", "recipe"]


class LeaderboardRow(TypedDict):
    """One leaderboard row: a (protocol group, model, recipe, statistics) cell and the latest value of each
    metric. A dict with exactly these keys, so `compare --json` writes it as it is."""

    model: str | None
    method: str  # "dense" for the dense model
    label: str  # the recipe in words ("wanda 0.5 2:4 ...")
    sparsity: float | None  # the recipe's target (None: N:M or dense)
    pattern: str
    scope: str
    allocation: str
    propagate: str
    recipe: str  # the recipe's cell digest ("" dense)
    stats_key: str
    calibration: dict | None
    seconds: dict | None  # {"prune", "evaluate"} of the latest run of the cell
    metrics: dict[str, float | None]  # metric -> latest value
    windows: dict[str, list[float]]  # perplexity metric -> its per-window mean NLLs (rows stored before: none)
    stderr: dict[str, float]  # accuracy metric -> lm-eval's standard error, where it was kept
    intervals: dict[str, list[float]]  # metric -> [low, high], its 95% interval (zprune_cli.records.intervals)
    best: list[str]  # metrics in which this row is the best of its sparsity and pattern, past the runner-up at 95%
    tied: list[str]  # metrics in which it cannot be told apart from the best (records/ranking.py)
    group: int  # its protocol group (rows of two groups are never ranked together)
    protocol: str  # the group's protocol in words


def known_metrics(rows: list[LeaderboardRow]) -> list[str]:
    return sorted({m for r in rows for m in r["metrics"]})


def metric_columns(rows: list[LeaderboardRow]) -> list[str]:
    """Perplexities first, then accuracies, then the measured sparsity."""
    metrics = known_metrics(rows)
    return [m for m in metrics if m.startswith("ppl:")] + [m for m in metrics if m.startswith(("acc:", "acc_norm:"))] + \
        [m for m in metrics if m == "sparsity"]


def cell_text(value, metric: str = "") -> str:
    if metric == "sparsity" and isinstance(value, (int, float)):
        return sparsity_text(value)
    return "" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def sparsity_text(value: float) -> str:
    """A sparsity as every command writes it (eval's header and table, prune's summary, leaderboards):
    4 decimals, so a measured 0.399999 reads 0.4000 wherever it is shown."""
    return f"{value:.4f}"


def recipe_text(row: dict) -> str:
    """The recipe digest, with what sets the row apart from the method's defaults ('3f2a9c1d owl, reconstruct')."""
    extras = row["label"].partition(" (")[2].rstrip(")")
    return " ".join(x for x in (row["recipe"][:8], extras) if x)


def row_cells(rows: list[LeaderboardRow], columns: list[str], intervals: bool = True) -> list[tuple[list[str], list[tuple[str, bool]]]]:
    """Per row: the HEAD cells, and per metric column (value text, is it the best of its sparsity and pattern).
    With `intervals`, a value's text carries its 95% interval where one is known, and "tied" when it cannot be
    told apart from the best of its sparsity and pattern (records/ranking.py)."""
    return [([r["model"], r["method"], r["pattern"], cell_text(r["sparsity"], "sparsity"), r["propagate"], recipe_text(r)],
             [(value_text(r, c) if intervals else cell_text(r["metrics"].get(c), c), c in r.get("best", [])) for c in columns])
            for r in rows]


def value_text(row: dict, metric: str) -> str:
    """'21.345 [20.871, 21.830]', with ' tied' when tied with the best; the bare value without an interval."""
    text = cell_text(row["metrics"].get(metric), metric)
    interval = (row.get("intervals") or {}).get(metric)
    if interval and text:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    if metric in (row.get("tied") or []):
        text += " tied"
    return text


def interval_columns(rows: list[dict], columns: list[str]) -> list[str]:
    """The metric columns some row has a 95% interval for (csv gives them low and high columns)."""
    return [c for c in columns if any(c in (r.get("intervals") or {}) for r in rows)]


def protocol_groups(rows: list[LeaderboardRow]) -> list[list[LeaderboardRow]]:
    """The rows split by protocol group, in order of first appearance: each is one table, never ranked
    against another."""
    return [[r for r in rows if r["group"] == g] for g in dict.fromkeys(r["group"] for r in rows)]
