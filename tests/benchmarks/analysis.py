"""The leaderboard's analysis sentences, rendered from leaderboard.json so they cannot drift from its numbers.

Every number in a sentence is computed from the cells; every "better than" rests on the paired test of the
two cells' per-window NLLs (zprune_cli.records.intervals), and a difference whose 95% interval includes zero is
called "within noise". Cells stored without windows are compared by value only and said to be untested.
publish.py writes the result between ANALYSIS markers in RESULTS.md and README_MARKERS in the README.
No torch import: zprune_cli.records.intervals is pure.
"""

from __future__ import annotations

import math

from publish import COLUMNS, at_seed_0, column_marks, column_of, models_of, perplexity_of, recipe_name, wall_time_sentence
from zprune_cli.records.intervals import paired_difference

START, END = "<!-- analysis:start -->", "<!-- analysis:end -->"
README_START, README_END = "<!-- results-summary:start -->", "<!-- results-summary:end -->"


def _metric(cell: dict) -> str | None:
    return next((m for m in cell["metrics"] if m.startswith("ppl:")), None)


def _name(cell: dict) -> str:
    return f"{recipe_name(cell)} ({cell['propagate']} propagation)"


def versus(a: dict, b: dict) -> str:
    """How a's perplexity stands against b's, in words: the change in % and, with windows, the paired test."""
    pa, pb = perplexity_of(a), perplexity_of(b)
    change = 100 * (pa / pb - 1)
    metric = _metric(a)
    wa, wb = (a.get("windows") or {}).get(metric), (b.get("windows") or {}).get(metric)
    if not wa or not wb:
        return f"{change:+.1f}% ({pa:.2f} against {pb:.2f}; untested: no windows stored)"
    paired = paired_difference(wa, wb)
    low, high = 100 * (math.exp(paired.low) - 1), 100 * (math.exp(paired.high) - 1)
    verdict = ("better" if change < 0 else "worse") if paired.excludes_zero else "within noise"
    return f"{change:+.1f}% ({pa:.2f} against {pb:.2f}; paired 95% interval {low:+.1f}% to {high:+.1f}%: {verdict})"


def column_sentences(cells: list[dict], model: str) -> list[str]:
    """Per column: the lowest perplexity and either every value tied with it (as the table marks them) or how the
    runner-up stands against it."""
    out = []
    for column in COLUMNS:
        ranked = sorted((c for c in cells if c["model"] == model and column_of(c) == column and perplexity_of(c) is not None
                         and math.isfinite(perplexity_of(c))), key=perplexity_of)
        if len(ranked) < 2:
            continue
        top = ranked[0]
        marks = column_marks(ranked)  # the table's rule: tied with every value the paired test cannot tell apart
        alike = [c for c in ranked[1:] if marks.get(id(c)) == "tied"]
        lowest = f"- {model}, {column}: lowest {_name(top)} at {perplexity_of(top):.2f}"
        if alike:
            out.append(f"{lowest}, tied with " + "; with ".join(f"{_name(c)}, which is {versus(c, top)}" for c in alike) + ".")
        else:
            out.append(f"{lowest}; the runner-up, {_name(ranked[1])}, is {versus(ranked[1], top)}.")
    return out


def propagation_sentences(cells: list[dict], model: str) -> list[str]:
    """Per recipe and column measured both ways: pruned propagation against dense statistics."""
    by = {(recipe_name(c), column_of(c), c["propagate"]): c for c in cells
          if c["model"] == model and c["method"] != "dense" and perplexity_of(c) is not None}
    out = []
    for (recipe, column, propagate), pruned in sorted(by.items(), key=lambda kv: (COLUMNS.index(kv[0][1]), kv[0][0])):
        dense = by.get((recipe, column, "dense"))
        if propagate == "pruned" and dense is not None:
            out.append(f"- {model}, {recipe} at {column}: pruned propagation is {versus(pruned, dense)}.")
    return out


def analysis_section(board: dict) -> str:
    """RESULTS.md's rendered analysis: what ran, each column's best against its runner-up, propagation."""
    cells = board["cells"]
    models = models_of(board)
    runs = board.get("runs", [])
    core = sum(r["wall_seconds"] for r in runs) / 60
    # a run resumed over sittings: its measured time is theirs (its runs' rows are only the sittings that ended them)
    machine_time = (wall_time_sentence(board) if board.get("sittings") else
                    f"{len(runs)} runs whose wall times sum to {core:.1f} core-minutes (a sum of runs, not the wall time of one).")
    out = [START, "", "**Rendered from leaderboard.json by `--publish`** (every number computed; \"better\" and \"worse\" "
           "only where the paired 95% interval over the windows excludes zero).", "",
           f"What ran: {len(cells)} cells on {len(models)} model{'s' if len(models) != 1 else ''}. " + machine_time, "",
           "Each column's lowest perplexity against the runner-up:", ""]
    protocol = at_seed_0(cells)  # another seed's cell is the same recipe drawn again, not a competitor
    for model in models:
        out += column_sentences(protocol, model)
    out += ["", "Pruned propagation (each block's statistics from the pruned model) against dense statistics:", ""]
    for model in models:
        out += propagation_sentences(protocol, model)
    return "\n".join([*out, "", END])


def readme_summary(board: dict) -> str:
    """The README's sentence on what the leaderboard holds, exactly: per model, the recipes measured."""
    out = [README_START]
    for model in models_of(board):
        mine = [c for c in at_seed_0(board["cells"]) if c["model"] == model and c["method"] != "dense"]
        recipes = sorted({f"{recipe_name(c)} ({c['propagate']})" for c in mine})
        columns = [col for col in COLUMNS if any(column_of(c) == col for c in mine)]
        out.append(f"- {model}: {len(mine)} pruned cells and the dense row; columns {', '.join(columns)}; "
                   f"recipes: {', '.join(recipes)}.")
    return "\n".join([*out, README_END])
