"""Which leaderboard values are the best of their sparsity and pattern, and which are tied, from the evidence.

Rows are `comparison.leaderboard` rows. Each row's `windows` (metric -> per-window mean NLLs) and `stderr`
(metric -> lm-eval's standard error of an accuracy) come from the results store; this module adds
`intervals` (metric -> [low, high], the 95% interval), `best` and `tied` (metric names).

A value is marked best only when it differs from the runner-up at 95%: by the paired test on their windows
(perplexities), or by the unpaired difference of two accuracies with standard errors. Otherwise the best
value and every value not told apart from it are `tied`. Rows measured before windows were stored carry no
evidence either way: among them the lowest perplexity (highest accuracy) is marked best, as it always was.
"""

from __future__ import annotations

from zprune_cli.records.intervals import Paired, accuracy_difference, accuracy_interval, paired_difference, ppl_interval

RANKED = ("ppl:", "acc:", "acc_norm:")


def add_intervals(row: dict) -> None:
    """row["intervals"]: the 95% interval of every metric with windows (perplexity) or a standard error."""
    intervals = {}
    for metric, nlls in (row.get("windows") or {}).items():
        if nlls and len(nlls) >= 2:
            intervals[metric] = list(ppl_interval(nlls))
    for metric, stderr in (row.get("stderr") or {}).items():
        value = row["metrics"].get(metric)
        if isinstance(stderr, (int, float)) and value is not None:
            intervals[metric] = list(accuracy_interval(value, stderr))
    row["intervals"] = intervals


def mark_best(rows: list[dict]) -> None:
    """Per sparsity and pattern and per ranked metric: row["best"] and row["tied"] (see the module's text)."""
    for row in rows:
        row["best"], row["tied"] = [], []
    peers_of: dict = {}
    for row in rows:
        if row["pattern"]:  # the dense row is never ranked
            peers_of.setdefault((row["pattern"], row["sparsity"]), []).append(row)
    for peers in peers_of.values():
        for column in sorted({m for r in peers for m in r["metrics"] if m.startswith(RANKED)}):
            mark_column(peers, column)


def mark_column(peers: list[dict], column: str) -> None:
    """One metric column of rows that compete (same sparsity and pattern): adds `column` to the best row's
    `best`, or to every row tied with it in `tied` (the rows' lists must exist)."""
    measured = [r for r in peers if r["metrics"].get(column) is not None]
    if len(measured) < 2:
        return
    lower_is_better = column.startswith("ppl:")
    measured.sort(key=lambda r: r["metrics"][column] if lower_is_better else -r["metrics"][column])
    top = measured[0]
    if difference(measured[1], top, column) is None:  # no evidence stored: the lowest (highest) value, as before
        for r in measured:
            if r["metrics"][column] == top["metrics"][column]:
                r["best"].append(column)
        return
    alike = [r for r in measured[1:] if not _differs(difference(r, top, column))]
    if alike:
        for r in [top, *alike]:
            r["tied"].append(column)
    else:
        top["best"].append(column)


def difference(a: dict, b: dict, column: str) -> Paired | None:
    """a's value minus b's with its 95% interval, or None when the two rows do not carry what it needs."""
    if column.startswith("ppl:"):
        wa, wb = (a.get("windows") or {}).get(column), (b.get("windows") or {}).get(column)
        if not wa or not wb or len(wa) < 2:
            return None
        return paired_difference(wa, wb, (a.get("_protocols") or {}).get(column), (b.get("_protocols") or {}).get(column))
    sa, sb = (a.get("stderr") or {}).get(column), (b.get("stderr") or {}).get(column)
    if not isinstance(sa, (int, float)) or not isinstance(sb, (int, float)):
        return None
    return accuracy_difference(a["metrics"][column], sa, b["metrics"][column], sb)


def _differs(paired: Paired | None) -> bool:
    return paired is not None and paired.excludes_zero
