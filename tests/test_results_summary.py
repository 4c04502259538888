"""RESULTS.md's Summary is generated from its sections (tests/benchmarks/results_summary.py): it contradicted
them in six rows when it was written by hand. Every section with summary rows names the commits it measured."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))

import results_summary as rs  # noqa: E402


def test_the_committed_summary_is_what_the_sections_give():
    text = rs.RESULTS.read_text()
    assert rs.render(text) == text, "run python tests/benchmarks/results_summary.py"


def test_every_summarised_section_names_its_commits():
    for title, body in rs.sections(rs.RESULTS.read_text()):
        if title != "Summary" and rs.summary_rows(body):
            assert rs.commits(body), f"section {title!r} names no commit"


def test_a_row_moves_with_its_section_and_carries_its_commits():
    text = (f"# R\n\n## Summary\n\n{rs.BEGIN}\nstale | row |\n{rs.END}\n\n## bench_a.py\n\nat `abc1234`: 2x\n\n"
            "<!-- summary\n| bench_a | a / b | **2x** | <= 3x: **met** |\n| | c / d | 1.5x | (none) |\n-->\n\n"
            "## bench_b.py\n\nno commit here, 1234567 is a number\n\n<!-- summary\n| bench_b | e | 1 | (none) |\n-->\n")
    table = rs.render(text).split(rs.BEGIN)[1].split(rs.END)[0].strip().splitlines()
    assert table[2:] == ["| bench_a | a / b | **2x** | <= 3x: **met** | `abc1234` |", "| | c / d | 1.5x | (none) | |",
                         "| bench_b | e | 1 | (none) | not recorded |"]
    assert rs.render(rs.render(text)) == rs.render(text)
