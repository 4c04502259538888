"""RESULTS.md's Summary table, generated from the sections below it, so the two cannot disagree.

Each section keeps its own summary rows beside its numbers, in a comment that renders as nothing:

    <!-- summary
    | bench_x | what was measured | **result** | goal: **met** |
    -->

and this script writes them, in the sections' order, between the Summary's markers, with the commits each
section names (a section that names none says so):

    python tests/benchmarks/results_summary.py           # rewrite RESULTS.md's Summary
    python tests/benchmarks/results_summary.py --check   # exit 1 when it is stale (tests/test_results_summary.py)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"
_BLOCK = re.compile(r"<!-- summary\n(?P<rows>.*?)\n-->", re.DOTALL)
# a short or long commit hash: 7-12 hex digits with at least one letter and one digit, standing alone
_COMMIT = re.compile(r"(?<![\w./-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,12}(?![\w/-])")
HEADER = "| script | what | result | goal | measured at |\n|---|---|---|---|---|"


def sections(text: str) -> list[tuple[str, str]]:
    """(title, body) of every `## ` section, in order."""
    parts = re.split(r"(?m)^## ", text)[1:]
    return [(part.split("\n", 1)[0], part) for part in parts]


def commits(body: str) -> list[str]:
    """The commits a section names, first mention first."""
    return list(dict.fromkeys(_COMMIT.findall(_BLOCK.sub("", body))))


def summary_rows(body: str) -> list[str]:
    """The section's summary rows, the commits it names appended to the first."""
    rows = [row for block in _BLOCK.finditer(body) for row in block["rows"].splitlines() if row.strip()]
    named = commits(body)
    where = ", ".join(f"`{c}`" for c in named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
    return [row.rstrip() + f" {where or 'not recorded'} |" if i == 0 else row.rstrip() + " |"
            for i, row in enumerate(rows)]


def render(text: str) -> str:
    """`text` with the table between the Summary's markers made anew from the sections."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{RESULTS.name} has no {BEGIN} ... {END} markers")
    rows = [row for title, body in sections(text) if title != "Summary" for row in summary_rows(body)]
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + HEADER + "\n" + "\n".join(rows) + "\n" + END + rest.split(END, 1)[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when RESULTS.md's Summary is not what the sections give")
    args = p.parse_args(argv)
    text = RESULTS.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{RESULTS.name}: the Summary is stale; run {Path(__file__).name}", file=sys.stderr)
            raise SystemExit(1)
        return
    RESULTS.write_text(new)


if __name__ == "__main__":
    main()
