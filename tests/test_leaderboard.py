"""The published leaderboard: the README and RESULTS.md sections are what leaderboard.json renders to,
the tables mark the right best values, and `--check`'s comparison is to 4 significant digits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import publish  # noqa: E402  (tests/benchmarks/publish.py: no zprune import, cheap)


def cell(method, column, ppl, propagate="dense", label=None, model="m", metrics=None):
    pattern, sparsity = (column, 0.5) if ":" in str(column) else ("unstructured", column)
    if method == "dense":
        pattern, sparsity, propagate = "", None, ""
    return {"model": model, "grid": "g", "method": method, "label": label or method, "pattern": pattern,
            "sparsity": sparsity, "propagate": propagate, "recipe": "" if method == "dense" else f"{method}{column}{propagate}{label}",
            "protocol": "p", "metrics": metrics or {"ppl:wikitext2": ppl}, "seconds": {"prune": 1.0, "evaluate": 2.0}}


def test_same_to_4_significant_digits():
    assert publish.same_to_4_significant(29.185, 29.19) and publish.same_to_4_significant(132.474, 132.47)
    assert not publish.same_to_4_significant(29.2, 29.19)
    assert publish.same_to_4_significant(1235.4, 1235.0) and not publish.same_to_4_significant(1235.6, 1235.0)
    assert not publish.same_to_4_significant(float("nan"), 29.19)


def test_differences_name_each_changed_perplexity_only():
    committed = {"cells": [cell("dense", None, 29.19), cell("wanda", 0.5, 60.00)]}
    same = {"cells": [cell("dense", None, 29.1901), cell("wanda", 0.5, 60.004)]}
    assert publish.differences(same, committed) == []
    changed = {"cells": [cell("wanda", 0.5, 60.01), cell("ria", 0.5, 61.0)]}
    lines = publish.differences(changed, committed)
    assert len(lines) == 2 and "60.01 now, 60.0 committed" in lines[0] and "not in the committed" in lines[1]
    elsewhere = {"cells": [{**cell("wanda", 0.5, 60.0), "protocol": "p; statistics 0123abcd"}]}
    assert publish.differences(elsewhere, {"cells": [{**cell("wanda", 0.5, 60.0), "protocol": "p; statistics 9f8e7d6c"}]}) == []
    accuracy_only = {"cells": [cell("wanda", 0.5, None, metrics={"acc:piqa_local": 0.1})]}
    assert publish.differences(accuracy_only, committed) == []  # perplexities are compared, not accuracies


def test_perplexity_table_layout_and_best_per_column():
    cells = [cell("dense", None, 29.19), cell("wanda", 0.5, 60.0), cell("wanda", 0.5, 58.0, "pruned"),
             cell("zpruner", 0.5, 59.0), cell("zpruner", "2:4", 120.0), cell("wanda", "2:4", 125.0),
             cell("zpruner", 0.5, 55.0, "pruned", label="zpruner 0.5 (swaps:100, reconstruct=pcg)")]
    lines = publish.perplexity_table(cells)
    assert lines[0] == "| method | propagation | 50% | 60% | 70% | 2:4 | 4:8 |"
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line.strip("|").split("|")[2:] for line in lines[2:]}
    assert [c.strip() for c in rows[("dense", "-")]] == ["29.19"] * 5  # the baseline in every column, never bold
    assert [c.strip() for c in rows[("zpruner + swaps:100 + pcg", "pruned")]] == ["**55.00**", "-", "-", "-", "-"]
    assert [c.strip() for c in rows[("zpruner", "dense")]] == ["59.00", "-", "-", "**120.00**", "-"]
    assert sum("**" in line for line in lines) == 2


def test_zeroshot_table_means_the_accuracies():
    metrics = {"acc:piqa_local": 0.6, "acc_norm:piqa_local": 0.62, "acc:boolq_local": 0.5}
    lines = publish.zeroshot_table([cell("dense", None, None, metrics=metrics)])
    assert lines[0] == "| method | pattern | piqa | boolq | mean acc |"
    assert lines[2] == "| dense | - | 60.0 / 62.0 | 50.0 | 55.0 |"


def test_replace_section_keeps_the_rest_of_the_file():
    text = f"# T\n\nbefore\n\n{publish.START}\nold\n{publish.END}\n\nafter\n"
    new = publish.replace_section(text, f"{publish.START}\nnew\n{publish.END}")
    assert new == f"# T\n\nbefore\n\n{publish.START}\nnew\n{publish.END}\n\nafter\n"
    assert publish.published_section(new) == f"{publish.START}\nnew\n{publish.END}"


def test_the_published_sections_are_what_the_committed_results_render_to():
    board = json.loads((BENCHMARKS / "leaderboard.json").read_text())
    assert publish.published_section(publish.README.read_text()) == publish.readme_section(board)
    assert publish.published_section(publish.RESULTS_MD.read_text()) == publish.results_section(board)
    assert publish.PLOT.is_file() and publish.PLOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every committed perplexity is printed exactly once in the published tables, read from the JSON directly (not
    # through publish): a renderer that drops, repeats or overwrites a cell fails here although the line above holds
    section = publish.published_section(publish.RESULTS_MD.read_text())
    printed = sorted(float(x) for x in re.findall(r"(?<=\| )\**(\d+\.\d\d)\**(?= \|)", section))
    committed = sorted(round(v, 2) for c in board["cells"] for m, v in c["metrics"].items() if m.startswith("ppl:") and v is not None)
    assert printed == committed and committed


@pytest.mark.slow
def test_a_rerun_reproduces_committed_perplexities(tmp_path, full_data):
    """leaderboard.py --check on a cheap part of the grid (magnitude needs no calibration): every
    perplexity equal to the committed one to 4 significant digits. The committed cells name the full
    data files (their protocol names the calibration file), so this needs the full data folder."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "leaderboard.py"), "--check", "--models", "smollm2-135m",
                           "--grids", "leaderboard-dense", "--methods", "magnitude"],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "ZPRUNE_DATA_DIR": str(full_data)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 of 6 perplexities equal the committed ones" in done.stdout


def test_makespan_follows_the_schedule_with_each_worker_taking_the_next_run():
    runs = [{"model": m, "grid": g, "wall_seconds": s} for m, g, s in
            (("a", "x", 10.0), ("a", "y", 4.0), ("b", "x", 3.0), ("b", "y", 5.0))]
    board = {"schedule": [["a", "x"], ["b", "x"], ["a", "y"], ["b", "y"]], "runs": runs}
    # worker 1: a/x (10); worker 2: b/x (3) then a/y (to 7) then b/y (to 12)
    assert publish.makespan(board, 2) == 12.0
    assert publish.makespan(board, 1) == 22.0
    assert publish.makespan({**board, "schedule": [["a", "y"], ["b", "y"], ["a", "x"], ["b", "x"]]}, 2) == 14.0


def test_zeroshot_caveat_states_the_standard_error_of_the_subset():
    text = publish.zeroshot_caveat({"zero-shot": "the first 50 questions", "zero-shot questions": 50})
    assert "±7 points" in text and "±3 on the mean" in text  # sqrt(.25 / 50) = 7.1%, sqrt(.25 / 300) = 2.9%


def test_a_grid_claims_only_its_own_cells_and_their_times():
    """Two grids of one protocol group (run side by side) each print the whole group; a grid's run counts
    only the cells its own recipes name (and the dense row), so neither inflates the other's overhead."""
    import leaderboard

    dense, mine, theirs = cell("dense", None, 29.0), cell("wanda", 0.5, 60.0), cell("ria", 0.5, 61.0)
    board = leaderboard.Board({}, None)
    outcome = {"rows": [dense, mine, theirs], "recipes": [mine["recipe"]], "computed": 2, "skipped": 0,
               "wall_seconds": 6.0, "library": "x"}
    run = board.merge("m", "g1", outcome)
    assert run["cells_seconds"] == 6.0 and run["overhead"] == 1.0  # dense + wanda: 3 s each
    assert {c["recipe"] for c in board.data()["cells"]} == {"", mine["recipe"]}
