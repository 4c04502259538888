"""The published leaderboard: the README and RESULTS.md sections are what leaderboard.json renders to,
the tables mark the right best values, and `--check`'s comparison is to 4 significant digits."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
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


def test_the_models_come_in_the_schedules_order_not_the_order_their_grids_finished():
    board = {"schedule": [["s", "g"], ["x", "g"], ["t", "g"]], "protocol": {"calibration": "c", "perplexity": "p"},
             "cells": [cell("dense", None, 9.0, model="t"), cell("dense", None, 5.0, model="s"), cell("dense", None, 7.0, model="u")]}
    assert publish.models_of(board) == ["s", "t", "u"]
    section = publish.readme_section(board)
    assert section.index("**s: wikitext-2") < section.index("**t: wikitext-2") < section.index("**u: wikitext-2")


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
    assert publish.differences(accuracy_only, committed) == []  # an accuracy the committed cell lacks: nothing to compare
    on_amd = {"cells": [{**cell("wanda", 0.5, 60.00), "cpu": "AMD EPYC (avx2)"}]}
    assert publish.differences(changed, on_amd, "Xeon (avx512f)")[0] == (
        "m wanda ppl:wikitext2: 60.01 now, 60.0 committed (measured on AMD EPYC (avx2), now on Xeon (avx512f))")
    assert publish.differences(changed, on_amd, "AMD EPYC (avx2)")[0].endswith("60.0 committed")


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


def test_quantized_and_permuted_cells_get_rows_of_their_own():
    """The joint-quantization and permutation recipes (issues 22, 23): bits beside the method, the permutation
    as an extra, never sharing a row (and so overwriting a value) with the plain recipe."""
    cells = [cell("sparsegpt", 0.5, 60.0, "pruned"), cell("sparsegpt", 0.5, 61.0, "pruned", label="sparsegpt 0.5 w4 g64"),
             cell("alps", "2:4", 140.0, "pruned", label="alps 2:4 w4 g64 (swaps:100)"),
             cell("ria", "2:4", 300.0), cell("ria", "2:4", 225.0, label="ria 2:4 (permute=lsa)")]
    assert [publish.recipe_name(c) for c in cells] == ["sparsegpt", "sparsegpt w4 g64", "alps w4 g64 + swaps:100", "ria",
                                                      "ria + permute=lsa"]
    rows = {line.split("|")[1].strip(): line for line in publish.perplexity_table(cells)[2:]}
    assert "61.00" in rows["sparsegpt w4 g64"] and "61.00" not in rows["sparsegpt"]
    assert "225.00" in rows["ria + permute=lsa"] and "225.00" not in rows["ria"]


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
    import analysis  # the analysis sentences and the README's account of what is there: rendered, never hand-kept

    assert publish.published_section(publish.RESULTS_MD.read_text(), analysis.START, analysis.END) == analysis.analysis_section(board)
    assert publish.published_section(publish.README.read_text(), analysis.README_START, analysis.README_END) == \
        analysis.readme_summary(board)
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
    assert "6 of 6 perplexities and accuracies equal the committed ones" in done.stdout


@pytest.mark.slow
def test_a_seeded_sample_of_the_committed_cells_reproduces(full_data):
    """--check --sample on a small sample of the cheap kind (the full sample, every kind at 20%, takes about an
    hour of cells): seed 0 draws SmolLM2's Wanda 50% and 4:8 cells of the dense grid, each re-run alone in a
    fresh cache, their perplexities and the dense row's equal to the committed ones."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "leaderboard.py"), "--check", "--sample", "0.06", "--seed", "0",
                           "--models", "smollm2-135m", "--kinds", "statistics"],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "ZPRUNE_DATA_DIR": str(full_data)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sample (seed 0): 2 cells; statistics 2" in done.stdout
    assert "3 of 3 perplexities and accuracies equal the committed ones" in done.stdout


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


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_leaderboard_refuses_a_dirty_tree_and_a_second_commit_in_one_table(tmp_path):
    import one_run

    _git(tmp_path, "init", "-q")
    (tmp_path / "zprune_cli").mkdir()
    (tmp_path / "zprune_cli" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("not measured code\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    clean = one_run.tree_state(tmp_path)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert clean == one_run.TreeState(head, ())
    (tmp_path / "notes.md").write_text("edited: still clean for the leaderboard\n")
    assert one_run.tree_state(tmp_path).changed == ()
    _git(tmp_path, "commit", "-qam", "notes only")  # not the measured code: the run's commit stays
    assert one_run.tree_state(tmp_path) == clean
    (tmp_path / "zprune_cli" / "a.py").write_text("x = 2\n")
    (tmp_path / "zprune_cli" / "b.py").write_text("y = 1\n")
    dirty = one_run.tree_state(tmp_path)
    assert dirty.changed == ("zprune_cli/a.py", "zprune_cli/b.py")
    assert one_run.refusal({}, ["m"], dirty).startswith("the measured code has local changes (zprune_cli/a.py, zprune_cli/b.py)")

    mine = {**cell("wanda", 0.5, 60.0), "commit": head}
    assert one_run.refusal({"cells": [mine]}, ["m"], clean) is None
    legacy = cell("ria", 0.5, 61.0)  # no commit of its own: its run's record names it
    board = {"cells": [mine, legacy], "runs": [{"model": "m", "grid": "g", "library": "zprune_cli at 0485b5d"}]}
    assert one_run.table_commits(board) == {"m": sorted([head, "0485b5d"])}
    said = one_run.refusal(board, ["m"], clean)
    assert said.startswith(f"the m table holds cells from commit 0485b5d, this tree is at {head}: a new commit starts a new run")
    assert one_run.refusal(board, ["other"], clean) is None  # another model's table is not this one


def test_leaderboard_py_exits_2_with_one_line_on_a_dirty_tree(tmp_path, monkeypatch, capsys):
    import leaderboard
    import one_run

    monkeypatch.setattr(leaderboard, "tree_state", lambda repo: one_run.TreeState("abc1234", ("zprune_cli/x.py",)))
    monkeypatch.setattr(leaderboard, "run_all", lambda *a: pytest.fail("ran a grid from a dirty tree"))
    assert leaderboard.main(["--results", str(tmp_path / "board.json"), "--models", "m", "--grids", "g"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the measured code has local changes (zprune_cli/x.py)")


def test_new_cells_record_their_commit_threads_and_versions_and_head_may_not_move():
    import leaderboard
    import one_run

    recorded = one_run.environment("abc1234", 1)
    assert set(recorded["versions"]) == {"torch", "transformers", "lm_eval"} and recorded["threads"] == 1 and recorded["cpu"]
    board = leaderboard.Board({}, None, recorded)
    row = cell("wanda", 0.5, 60.0)
    outcome = {"rows": [row], "computed": 1, "skipped": 0, "wall_seconds": 3.0, "library": "x",
               "state": one_run.TreeState("abc1234", ())}
    board.merge("m", "g", outcome)
    assert [{k: c[k] for k in ("commit", "threads", "versions", "cpu")} for c in board.data()["cells"]] == [recorded]
    with pytest.raises(leaderboard.Refused, match="HEAD moved during the run"):
        board.merge("m", "g", {**outcome, "state": one_run.TreeState("def5678", ())})


def test_publish_refuses_a_table_with_cells_from_two_commits(tmp_path, monkeypatch):
    board = {"cells": [{**cell("wanda", 0.5, 60.0), "commit": "aaa1111"}, {**cell("ria", 0.5, 61.0), "commit": "bbb2222"},
                       {**cell("ria", 0.5, 61.0, model="n"), "commit": "ccc3333"}], "runs": []}
    for name in ("README", "RESULTS_MD", "PLOT"):  # nothing may be written
        monkeypatch.setattr(publish, name, tmp_path / name)
    with pytest.raises(publish.MixedCommits, match=r"^m: cells from commits aaa1111, bbb2222: a published table is one run"):
        publish.publish(board)
    assert list(tmp_path.iterdir()) == []


def test_the_plot_has_no_segment_across_an_unmeasured_sparsity():
    board = {"cells": [cell("dense", None, 20.0), cell("wanda", 0.5, 30.0), cell("wanda", 0.6, 40.0), cell("wanda", 0.7, 90.0),
                       cell("ria", 0.5, 31.0, propagate="pruned"), cell("ria", 0.7, 80.0, propagate="pruned"),
                       cell("ria", 0.6, 50.0, model="n", propagate="pruned")]}
    lines = publish.plot_lines(board, "m")
    assert lines["wanda (dense)"] == ([0.5, 0.6, 0.7], [30.0, 40.0, 90.0])
    xs, ys = lines["ria (pruned)"]
    assert xs == [0.5, 0.6, 0.7] and ys[0] == 31.0 and math.isnan(ys[1]) and ys[2] == 80.0  # no line through 60%
    levels = [0.5, 0.6, 0.7]  # matplotlib joins consecutive finite points only: each line must visit every level
    assert all(xs == levels[levels.index(xs[0]): levels.index(xs[-1]) + 1] for xs, _ in lines.values())


BASE = [4.0, 4.2, 4.4, 4.6]


def windowed(method, column, shift, propagate="dense", model="m"):
    """A cell whose per-window NLLs are BASE + shift (a number each, or one per window)."""
    shifts = shift if isinstance(shift, list) else [shift] * len(BASE)
    nlls = [b + s for b, s in zip(BASE, shifts)]
    return {**cell(method, column, math.exp(sum(nlls) / len(nlls)), propagate, model=model),
            "windows": {"ppl:wikitext2": nlls}}


def test_the_published_table_marks_best_only_past_the_runner_up_and_shows_intervals():
    from zprune_cli.records.intervals import ppl_interval

    clear = [windowed("wanda", 0.5, 0.0), windowed("ria", 0.5, [0.1, 0.2, 0.1, 0.2])]
    tied = [windowed("wanda", 0.6, 0.0), windowed("ria", 0.6, [0.3, -0.1, 0.2, -0.2])]
    lines = publish.perplexity_table([cell("dense", None, 20.0), *clear, *tied])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2:5] for line in lines[2:]}
    low, high = ppl_interval(BASE)
    assert rows["wanda"][0] == f"**{math.exp(4.3):.2f} [{low:.2f}, {high:.2f}]**"  # 50%: the paired test excludes 0
    assert rows["ria"][0].count("**") == 0 and not rows["ria"][0].endswith("tied")
    assert rows["wanda"][1].endswith(" tied") and rows["ria"][1].endswith(" tied")  # 60%: it does not
    assert rows["wanda"][2] == "-"


def test_the_rendered_analysis_numbers_are_the_tables():
    import re

    import analysis

    board = {"runs": [{"wall_seconds": 60.0}, {"wall_seconds": 90.0}],
             "cells": [cell("dense", None, 20.0), windowed("wanda", 0.5, 0.0), windowed("ria", 0.5, [0.1, 0.2, 0.1, 0.2]),
                       windowed("wanda", 0.5, [0.3, -0.1, 0.2, -0.2], propagate="pruned"), windowed("wanda", "2:4", 1.0),
                       windowed("ria", "2:4", 1.5)]}
    text = analysis.analysis_section(board)
    table = "\n".join(publish.perplexity_table(board["cells"]))
    assert "6 cells on 1 model. 2 runs whose wall times sum to 2.5 core-minutes" in text
    resumed = analysis.analysis_section({**board, "sittings": [{"jobs": 2, "wall_seconds": 7200.0}]})
    assert "6 cells on 1 model. One run in 1 sitting of `leaderboard.py` (`--jobs 2`, one core a job): 2.00 h" in resumed
    sentences = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(sentences) == 2 + 1  # the 50% and 2:4 columns; wanda's propagation at 50%
    # the table's values, as printed: the first number of every cell after the method and propagation columns
    printed = {cell.strip(" *").split(" ")[0] for line in table.splitlines()[2:] for cell in line.split("|")[3:-1]} - {"-"}
    for line in sentences:
        change, a, b = re.search(r"is ([+-][\d.]+)% \(([\d.]+) against ([\d.]+);", line).groups()
        assert {a, b} <= printed  # each number is the table's
        assert abs(float(change) - 100 * (float(a) / float(b) - 1)) <= 0.05 + 100 * 0.005 / float(b) * 2  # rounding only
    lowest = re.search(r"m, 50%: lowest (\S+) \((\w+) propagation\) at ([\d.]+)[;,]", text)
    assert lowest.groups() == ("wanda", "dense", f"{math.exp(4.3):.2f}") and lowest.group(3) in printed
    # 50%: wanda under pruned propagation is not told apart from the lowest (the table's "tied"); ria is
    assert re.search(r"at [\d.]+, tied with wanda \(pruned propagation\), which is \+[\d.]+% \(.*: within noise\)\.$", sentences[0])
    (pruned_row,) = [line for line in table.splitlines() if line.startswith("| wanda | pruned |")]
    assert " ria " not in sentences[0] and pruned_row.split(" | ")[2].endswith(" tied")
    assert sentences[1].startswith("- m, 2:4: lowest wanda") and sentences[1].endswith(": worse).")  # ria +0.5 every window
    assert sentences[2].startswith("- m, wanda at 50%: pruned propagation is") and sentences[2].endswith(": within noise).")


def test_the_check_sample_is_seeded_covers_every_kind_and_is_at_least_the_fraction():
    import sampling

    cells = [cell("dense", None, 20.0)] + [cell(m, s, 30.0 + i, label=f"{m} {s}") for i, (m, s) in
                                           enumerate((m, s) for m in ("wanda", "ria", "zpruner") for s in (0.5, 0.6, 0.7, "2:4"))]
    cells += [cell("sparsegpt", 0.5, 40.0, propagate="pruned", metrics={"ppl:wikitext2": 40.0, "acc:piqa_local": 0.6}),
              cell("alps", 0.5, 39.0, propagate="pruned"),
              cell("wanda", "2:4", 50.0, propagate="pruned", label="wanda 2:4 (swaps:100, reconstruct=pcg)")]
    assert [sorted(sampling.kinds_of(c)) for c in cells[-3:]] == [["sparsegpt", "zero-shot"], ["alps"], ["swaps + pcg"]]
    sample = sampling.sample_cells(cells, 0.2, seed=7)
    # ceil(0.2 x 15 pruned cells) = 3, but covering the five kinds takes 4 (sparsegpt carries zero-shot)
    assert len(sample) == 4
    assert len(sampling.sample_cells(cells, 0.5, seed=7)) == math.ceil(0.5 * 15)
    assert set().union(*map(sampling.kinds_of, sample)) == {"statistics", "sparsegpt", "alps", "swaps + pcg", "zero-shot"}
    assert sample == sampling.sample_cells(cells, 0.2, seed=7)  # seeded
    assert any(sampling.sample_cells(cells, 0.5, seed) != sampling.sample_cells(cells, 0.5, 7) for seed in range(5))
    only = sampling.sample_cells(cells, 0.01, seed=0, kinds=("statistics",))
    assert len(only) == 1 and sampling.kinds_of(only[0]) == {"statistics"}
    assert sampling.cell_flags(cells[-1]) == ["--method", "wanda", "--sparsity", "0.5", "--pattern", "2:4"]
    with pytest.raises(ValueError, match="fraction in"):
        sampling.sample_cells(cells, 1.5, 0)


def test_check_compares_accuracies_too():
    committed = {"cells": [cell("wanda", 0.5, 60.0, metrics={"ppl:wikitext2": 60.0, "acc:piqa_local": 0.62})]}
    fresh = {"cells": [cell("wanda", 0.5, 60.0, metrics={"ppl:wikitext2": 60.0, "acc:piqa_local": 0.64})]}
    assert publish.differences(fresh, committed) == ["m wanda acc:piqa_local: 0.64 now, 0.62 committed"]


def test_zeroshot_table_shows_the_95_percent_half_width_where_the_standard_error_is_kept():
    scored = {**cell("wanda", 0.5, 60.0, metrics={"acc:piqa_local": 0.62, "acc_norm:piqa_local": 0.6}),
              "stderr": {"acc:piqa_local": 0.05}}
    assert publish.zeroshot_table([scored])[2] == "| wanda (dense) | 50% | 62.0 ±9.8 / 60.0 | 62.0 |"  # 1.96 x 5 points


def test_the_complete_protocol_s_grids_exist_and_its_seed_grids_differ_only_in_the_seed():
    """Every grid the default run schedules is a grid of the repository's zprune.toml; the other calibration
    seeds of the best recipes are their grid at seeds 1 and 2 with nothing else changed but the zero-shot
    tasks (asked once, at seed 0); the run asks its windows and questions of every grid."""
    import tomllib

    import leaderboard

    grids = tomllib.loads((BENCHMARKS.parents[1] / "zprune.toml").read_text())["grids"]
    assert {grid for _, grid in leaderboard.SCHEDULE} <= set(leaderboard.GRIDS) <= set(grids)
    assert {model for model, _ in leaderboard.SCHEDULE} == set(leaderboard.MODELS)
    for seed in (1, 2):
        for base, other in (("leaderboard-best", f"leaderboard-best-seed{seed}"), ("leaderboard-gram", f"leaderboard-alps-seed{seed}")):
            assert grids[other]["seed"] == seed and grids[base]["seed"] == 0
            same = {k: v for k, v in grids[base].items() if k not in ("seed", "tasks", "limit", "batch_size", "methods")}
            assert same == {k: v for k, v in grids[other].items() if k not in ("seed", "methods")}, other
            assert set(grids[other]["methods"]) <= set(grids[base]["methods"])
    protocol = leaderboard.protocol(64, 200)
    assert "the first 64" in protocol["perplexity"] and protocol["zero-shot questions"] == 200
    assert "the first 200 questions" in protocol["zero-shot"]
    assert leaderboard.protocol(None)["zero-shot questions"] == leaderboard.QUESTIONS == 50


def test_other_calibration_seeds_show_as_a_spread_and_stay_out_of_the_tables():
    """A recipe measured at seeds 0, 1 and 2: the perplexity table, the plot's lines and the analysis read the seed-0
    cell only; the seeds table shows each seed, the mean and the spread (max - min, % of the mean), computed here."""
    import analysis

    def seeded(ppl, seed):
        c = cell("wanda", 0.5, ppl, propagate="pruned", label="wanda 0.5 (swaps:100, reconstruct=pcg)")
        return {**c, "protocol": f"m; calibration c4.jsonl 32x512 seed {seed}; statistics x"}

    cells = [cell("dense", None, 20.0), seeded(40.0, 0), seeded(44.0, 1), seeded(42.0, 2), cell("magnitude", 0.5, 90.0)]
    assert [publish.seed_of(c) for c in cells] == [0, 0, 1, 2, 0]
    table = publish.perplexity_table(publish.at_seed_0(cells))
    assert any("40.00" in line for line in table) and not any("44.00" in line or "42.00" in line for line in table)
    seeds = publish.seeds_table(cells)
    assert len(seeds) == 3 and seeds[0].count("seed ") == 3
    assert seeds[2] == "| wanda + swaps:100 + pcg | pruned | 50% | 40.00 | 44.00 | 42.00 | 42.00 | 9.5% |"
    board = {"cells": cells, "protocol": {"calibration": "c", "perplexity": "p"}, "library": "x", "runs": []}
    assert "calibration draws" in publish.readme_section(board)
    assert publish.plot_lines(board, "m")["wanda + swaps:100 + pcg (pruned)"] == ([0.5], [40.0])
    assert "44.00" not in analysis.analysis_section(board) and "42.00" not in analysis.analysis_section(board)


def test_a_cache_filled_at_one_commit_is_refused_at_another(tmp_path, monkeypatch, capsys):
    """compare reuses the cells it finds in the cache's results store: a run resumed at a new commit would stamp
    the old commit's cells with its own, so the cache is bound to the commit that first filled it."""
    import leaderboard
    import one_run

    cache, first, second = tmp_path / "cache", one_run.TreeState("abc1234", ()), one_run.TreeState("def5678", ())
    assert one_run.cache_refusal(cache, first) is None  # a new folder
    one_run.bind_cache(cache, first)
    (cache / "results.sqlite").write_bytes(b"")
    assert one_run.cache_refusal(cache, first) is None  # the same commit resumes
    assert one_run.cache_refusal(cache, second) == (f"the cache {cache} holds cells measured at commit abc1234, "
                                                    "this tree is at def5678: give --cache a new folder")
    (cache / one_run.CACHE_COMMIT).unlink()  # a store filled before caches were bound
    assert one_run.cache_refusal(cache, first).endswith("holds cells of an unrecorded commit: give --cache a new folder")

    one_run.bind_cache(cache, first)
    monkeypatch.setattr(leaderboard, "tree_state", lambda repo: second)
    monkeypatch.setattr(leaderboard, "run_all", lambda *a: pytest.fail("resumed from another commit's cache"))
    args = ["--results", str(tmp_path / "board.json"), "--models", "m", "--grids", "g", "--cache", str(cache)]
    assert leaderboard.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds cells measured at commit abc1234" in err


def test_each_sitting_of_a_resumed_run_records_its_measured_wall_time(tmp_path, monkeypatch):
    """A run resumed over several invocations states the machine time it took: each sitting's wall time is
    measured and kept in the results file, also when the sitting is interrupted."""
    import leaderboard
    import one_run

    monkeypatch.setattr(leaderboard, "tree_state", lambda repo: one_run.TreeState("abc1234", ()))
    results = tmp_path / "board.json"
    args = ["--results", str(results), "--models", "m", "--grids", "g", "--cache", str(tmp_path / "cache"), "--jobs", "2"]

    def interrupted(*a):
        time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(leaderboard, "run_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        leaderboard.main(args)
    (first,) = json.loads(results.read_text())["sittings"]
    assert first["jobs"] == 2 and first["finished"] is False and first["wall_seconds"] >= 0.05

    monkeypatch.setattr(leaderboard, "run_all", lambda *a: time.sleep(0.05))
    assert leaderboard.main(args) == 0
    sittings = json.loads(results.read_text())["sittings"]
    assert [s["finished"] for s in sittings] == [False, True] and sittings[0] == first

    board = {"sittings": [{"jobs": 2, "wall_seconds": 5400.0}, {"jobs": 1, "wall_seconds": 1800.0}], "runs": []}
    assert publish.wall_time_sentence(board) == (
        "One run in 2 sittings of `leaderboard.py` (`--jobs 1/2`, one core a job): 2.00 h of wall time in all, "
        "measured by each sitting (one killed outright misses at most its last minute), 3.50 core-hours at most "
        "(wall x jobs).")


SIGTERM_SITTING = """
import os, signal, sys, time
sys.path.insert(0, {benchmarks!r})
import leaderboard, one_run
leaderboard.tree_state = lambda repo: one_run.TreeState("abc1234", ())

def run_grid(model, grid, cache, narrow, windows=None, limit=None):
    with open({started!r}, "a") as out:
        out.write(grid + "\\n")
    code, _ = leaderboard.run_child([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); "
                                     "open({child!r}, 'w').write(str(os.getpid())); time.sleep(120)"], dict(os.environ))
    raise SystemExit(f"compare ended with {{code}}")

leaderboard.run_grid = run_grid
leaderboard.warm_statistics = lambda jobs, cache: None  # no zprune.toml grids here
signal.signal(signal.SIGTERM, leaderboard.end_at_sigterm)  # as leaderboard.py's __main__ does
sys.exit(leaderboard.main(["--results", {results!r}, "--models", "m", "--grids", "g1,g2", "--cache", {cache!r},
                           "--jobs", "1"]))
"""


def test_each_calibration_is_stored_whole_before_any_grid_runs(tmp_path, monkeypatch):
    """The measured code keys a row by the store entry that served its calibration; the run stores each
    calibration's full entry first, one process at a time, so which grid calibrated first never changes a key."""
    import leaderboard

    order = []
    monkeypatch.setattr(leaderboard, "run_child", lambda command, env: order.append(command[3:]) or (0, ""))

    def run_grid(model, grid, *rest):
        order.append(["grid", model, grid])
        raise RuntimeError("stop here")

    monkeypatch.setattr(leaderboard, "run_grid", run_grid)
    args = leaderboard.parse_args(["--jobs", "1"])
    with pytest.raises(RuntimeError, match="stop here"):
        leaderboard.run_all(args, tmp_path, leaderboard.Board({}, tmp_path / "b.json", {"commit": "abc1234"}))
    warmed = [(c[1], c[c.index("-n") + 1], c[c.index("-l") + 1], c[c.index("--seed") + 1]) for c in order[:-1]]
    assert [c[0] for c in order[:-1]] == ["calibrate"] * 6 and order[-1] == ["grid", *leaderboard.SCHEDULE[0]]
    assert sorted(warmed) == sorted((m, "32", "512", s) for m in leaderboard.MODELS for s in "012")
    assert all("--gram" not in c and c[c.index("--cache-dir") + 1] == str(tmp_path) for c in order[:-1])


def test_sigterm_ends_the_compares_under_way_and_records_the_sittings_time(tmp_path):
    """`kill` of a sitting ends its compare processes, starts no other grid, and records the sitting's wall time up
    to the signal (without the handler the minute clock's last tick, up to a minute earlier, was all it kept)."""
    started, child, results = tmp_path / "started", tmp_path / "child", tmp_path / "board.json"
    script = SIGTERM_SITTING.format(benchmarks=str(BENCHMARKS), started=str(started), child=str(child),
                                    results=str(results), cache=str(tmp_path / "cache"))
    sitting = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (child.exists() and child.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    sitting.send_signal(signal.SIGTERM)
    sitting.communicate(timeout=20)
    assert sitting.returncode == 128 + signal.SIGTERM
    pid = int(child.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the compare process ended (and was reaped) with its sitting
    assert started.read_text() == "g1\n"  # the second grid never started
    (record,) = json.loads(results.read_text())["sittings"]
    assert record["finished"] is False and record["wall_seconds"] >= 1.5


def test_progress_carried_to_a_new_cache_gives_compare_the_same_rows(tmp_path):
    """A session's machine may come with an empty cache: the rows saved by --progress come back into a new cache's
    results store whole, and a file of another commit is refused."""
    from carry import restore_progress, save_progress
    from zprune_cli.records.results import ResultRow, ResultsStore, results_path

    old, new, saved = tmp_path / "old", tmp_path / "new", tmp_path / "progress.json.gz"
    assert save_progress(old, saved, "abc1234") == 0 and not saved.exists()
    with ResultsStore(results_path(old)) as store:
        for i in range(3):
            store.record(ResultRow(metric="ppl:wikitext2", value=10.0 + i, fingerprint=f"f{i}", method="wanda",
                                   sparsity=0.5, settings={"windows": [1.5, 2.5]}, protocol={"max_windows": 64}))
        before = store.query()
    assert save_progress(old, saved, "abc1234") == 3
    with pytest.raises(ValueError, match="commit abc1234, this tree is at def5678"):
        restore_progress(saved, new, "def5678")
    assert restore_progress(saved, new, "abc1234") == 3
    with ResultsStore(results_path(new)) as store:
        assert store.query() == before
    assert restore_progress(saved, new, "abc1234") == 3  # again: nothing is added twice
    with ResultsStore(results_path(new)) as store:
        assert store.query() == before


def test_a_reinstalled_model_file_gets_the_runs_modification_time_back(tmp_path):
    """The model fingerprint trusts a weights file's modification time: a new machine's reinstall of the same
    bytes gets the recorded time back (so the carried rows match), while a file with other bytes is left alone."""
    import os

    from carry import file_records, restore_file_times, save_progress
    from zprune_cli.records.results import ResultRow, ResultsStore, results_path

    same, other, gone = tmp_path / "same.gguf", tmp_path / "other.gguf", tmp_path / "gone.gguf"
    for path in (same, other, gone):
        path.write_bytes(b"weights" * 1000)
    records = file_records([same, other, gone])
    assert records[0]["size"] == 7000 and records[0]["sha256"] == records[1]["sha256"]
    with ResultsStore(results_path(tmp_path / "cache")) as store:
        store.record(ResultRow(metric="ppl:wikitext2", value=10.0, fingerprint="f", method="dense"))
    saved = tmp_path / "progress.json.gz"
    assert save_progress(tmp_path / "cache", saved, "abc1234", records) == 1
    # the new machine: the same bytes installed later, one file changed in place, one missing
    other.write_bytes(b"WEIGHTS" * 1000)
    gone.unlink()
    for path in (same, other):
        os.utime(path, ns=(10**18, 10**18 + 123))
    said = restore_file_times(saved)
    assert same.stat().st_mtime_ns == records[0]["mtime_ns"]
    assert other.stat().st_mtime_ns == 10**18 + 123
    assert said == [f"{same}: the same bytes as the run's model file, its recorded modification time restored",
                    f"warning: {other} differs from the run's model file: its cells are computed again",
                    f"warning: {gone} is not the run's model file (missing or resized): its cells are computed again"]
    assert restore_file_times(saved) == said[1:]  # a second time: nothing more to restore
    assert restore_file_times(tmp_path / "none.json.gz") == []


def test_a_model_file_assembled_at_resolution_gets_its_time_back_at_a_resume(tmp_path, monkeypatch):
    """Gemma's package writes its weights file when the model is first resolved: a resume on a new machine
    resolves the models before restoring the recorded times, so that file is found and keeps the run's cells (it
    was missing at the restore, and the sitting's save then recorded the new time in place of the run's)."""
    import leaderboard
    import one_run
    from carry import file_records, save_progress
    from zprune_cli.records.results import ResultRow, ResultsStore, results_path

    assembled = tmp_path / "assembled.gguf"
    assembled.write_bytes(b"weights" * 1000)
    records = file_records([assembled])
    with ResultsStore(results_path(tmp_path / "old")) as store:
        store.record(ResultRow(metric="ppl:wikitext2", value=10.0, fingerprint="f", method="dense"))
    progress = tmp_path / "progress.json.gz"
    save_progress(tmp_path / "old", progress, "abc1234", records)
    assembled.unlink()  # the new machine: not assembled yet

    def resolve(models):
        assembled.write_bytes(b"weights" * 1000)
        return [assembled]

    monkeypatch.setattr(leaderboard, "tree_state", lambda repo: one_run.TreeState("abc1234", ()))
    monkeypatch.setattr(leaderboard, "model_files", resolve)
    monkeypatch.setattr(leaderboard, "run_all", lambda *a: None)
    assert leaderboard.main(["--results", str(tmp_path / "board.json"), "--models", "m", "--grids", "g",
                             "--cache", str(tmp_path / "cache"), "--progress", str(progress)]) == 0
    assert assembled.stat().st_mtime_ns == records[0]["mtime_ns"]
    assert file_records([assembled]) == records


def test_the_published_tables_name_the_cells_commit_not_the_runs_head():
    """A run pinned to one commit of the measured code goes on while HEAD moves on by commits of results and
    prose: the tables name the commit the cells record, once, whatever HEAD each sitting started at."""
    import publish

    cells = [{**cell("dense", None, 20.0), "commit": "708b3f7"}, {**cell("wanda", 0.5, 40.0), "commit": "708b3f7"}]
    board = {"cells": cells, "protocol": {"calibration": "c", "perplexity": "p"},
             "library": "zprune_cli at 1bab942, zprune_cli at 3eaca04", "runs": []}
    assert publish.measured_code(board) == "zprune_cli at 708b3f7"
    assert "(zprune_cli at 708b3f7, CPU, float32)" in publish.readme_section(board)
    assert "Library: zprune_cli at 708b3f7." in publish.results_section(board)
    legacy = {"cells": [cell("dense", None, 20.0)], "runs": [{"model": "m", "grid": "g", "library": "zprune_cli at 0485b5d"}]}
    assert publish.measured_code(legacy) == "zprune_cli at 0485b5d"


def test_a_sitting_on_another_machine_keeps_each_cells_record_and_refuses_other_library_versions(tmp_path):
    """A run resumed over sittings on different machines: a cell found stored keeps the processor and libraries
    of the sitting that measured it, a fresh cell records this sitting's, and a venv with other library versions
    may not add cells to the table."""
    import leaderboard
    import one_run

    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert one_run.cpu_kind(info) == "AMD EPYC 7B13 (avx2)"
    assert one_run.cpu_kind(tmp_path / "none") is None
    first = {"commit": "abc1234", "threads": 1, "versions": {"torch": "2.13.0", "transformers": "5.25.0"}, "cpu": "A (avx2)"}
    second = {**first, "cpu": "B (avx512f)"}
    state = one_run.TreeState("abc1234", ())
    board = leaderboard.Board({}, None, first)
    stored, new = cell("wanda", 0.5, 60.0), cell("ria", 0.5, 61.0)
    board.merge("m", "g", {"rows": [stored], "computed": 1, "skipped": 0, "wall_seconds": 3.0, "state": state})
    board = leaderboard.Board(board.data(), None, second)
    board.merge("m", "g", {"rows": [stored, new], "computed": 1, "skipped": 1, "wall_seconds": 3.0, "state": state})
    assert {c["method"]: c["cpu"] for c in board.data()["cells"]} == {"wanda": "A (avx2)", "ria": "B (avx512f)"}

    data = board.data()
    assert one_run.version_refusal(data, ["m"], first["versions"]) is None
    assert one_run.version_refusal(data, ["n"], {"torch": "2.14.1"}) is None  # another table
    assert one_run.version_refusal(data, ["m"], {"torch": "2.13.0", "transformers": "5.26.0"}) == (
        "the m table was measured with other library versions (transformers==5.25.0): "
        "install them (pip install transformers==5.25.0) or start a new run")


def test_only_the_cells_a_process_computed_count_as_its_own(tmp_path):
    """A grid resumed after a kill finds cells the killed process left in the store: they are not the new
    process's work (its overhead would come out below 1x) and their machine is unknown, while the cells it
    computed carry its sitting's record."""
    import time

    import leaderboard
    from zprune_cli.records.results import ResultRow, ResultsStore, results_path

    with ResultsStore(results_path(tmp_path)) as store:
        store.record(ResultRow(metric="ppl:wikitext2", value=60.0, model="m", method="wanda", recipe="left"))
        time.sleep(0.01)
        since = leaderboard.datetime.now(leaderboard.timezone.utc).isoformat(timespec="milliseconds")
        time.sleep(0.01)
        store.record(ResultRow(metric="ppl:wikitext2", value=61.0, model="m", method="ria", recipe="mine"))
        store.record(ResultRow(metric="ppl:wikitext2", value=20.0, model="m", method="dense"))
        store.record(ResultRow(metric="ppl:wikitext2", value=21.0, model="other", method="ria", recipe="theirs"))
    assert leaderboard.computed_since(tmp_path, "m", since) == ["", "mine"]
    assert leaderboard.computed_since(tmp_path / "none", "m", since) == []

    recorded = {"commit": "abc1234", "threads": 1, "versions": {}, "cpu": "B (avx512f)"}
    board = leaderboard.Board({}, None, recorded)
    left, mine = {**cell("wanda", 0.5, 60.0), "recipe": "left"}, {**cell("ria", 0.5, 61.0), "recipe": "mine"}
    run = board.merge("m", "g", {"rows": [left, mine], "computed": 1, "skipped": 1, "wall_seconds": 4.0,
                                 "computed_here": ["mine"]})
    assert run["cells_seconds"] == 3.0 and run["overhead"] == pytest.approx(4.0 / 3.0, abs=1e-3)
    assert {c["recipe"]: c["cpu"] for c in board.data()["cells"]} == {"left": None, "mine": "B (avx512f)"}
