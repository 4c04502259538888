"""The leaderboard as one self-contained HTML page: inline CSS, the plots inline as data URIs, no script and
no external address, so the file can be mailed or archived as it is.

The cells are the ones the terminal, markdown and csv renderings show (`leaderboard_cells`); every text
that came from the results store goes through `html.escape`.
"""

from __future__ import annotations

import base64
import time
from html import escape
from typing import Mapping

from zprune_cli.records.leaderboard_cells import HEAD, LeaderboardRow, metric_columns, protocol_groups, row_cells

LEGEND = ("Bold on green: the best value of its sparsity and pattern within its protocol group (lowest perplexity, "
          "highest accuracy), when it differs from the runner-up at 95% (the paired test on the perplexity windows); "
          "\"tied\" when it does not. [low, high]: the 95% interval, where the windows or a standard error were stored. "
          "Groups are measured under different protocols and never ranked against each other.")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 80rem;
       padding: 0 1rem; color: #1b1f24; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.05rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; white-space: nowrap; }
thead th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #dafbe1; }
.legend, .note { color: #57606a; font-size: 0.9rem; }
img { max-width: 100%; height: auto; }
"""


def leaderboard_html(rows: list[LeaderboardRow], *, title: str | None = None, plots: Mapping[int, bytes | str] | None = None,
                     versions: Mapping[str, str | None] | None = None, generated: str | None = None) -> str:
    """The page: a title naming the model(s), per protocol group a heading (its protocol), a table and its
    plot, then the versions that wrote the page.

    `plots` maps a group number to a PNG's bytes, or to a line saying why that group has no plot.
    `versions` defaults to the ones a pruned folder's zprune.json records (provenance.current_versions);
    `generated` to the current local time.
    """
    if versions is None:
        from zprune_cli.records.provenance import current_versions

        versions = current_versions()
    title = title or "zprune leaderboard: " + (", ".join(dict.fromkeys(r["model"] for r in rows)) or "no results")
    groups = protocol_groups(rows)
    body = [f"<h1>{escape(title)}</h1>", f'<p class="legend">{escape(LEGEND)}</p>' if groups else "<p>No results.</p>"]
    body += [_group_section(group, (plots or {}).get(group[0]["group"])) for group in groups]
    body.append(_versions_section(versions, generated or time.strftime("%Y-%m-%dT%H:%M:%S%z")))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _group_section(rows: list[LeaderboardRow], plot: bytes | str | None) -> str:
    heading = f"<h2>{escape(rows[0]['protocol'])}</h2>"
    return f'<section class="group">\n{heading}\n{_table(rows)}\n{_figure(plot)}</section>'


def _table(rows: list[LeaderboardRow]) -> str:
    """HEAD and metric columns as in the other renderings; a best value is <td class="best"><strong>."""
    columns = metric_columns(rows)
    head = "".join(f"<th>{escape(name)}</th>" for name in HEAD) + \
        "".join(f'<th class="num">{escape(name)}</th>' for name in columns)
    lines = ["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for text, values in row_cells(rows, columns):
        cells = "".join(f"<td>{escape(t)}</td>" for t in text)
        cells += "".join(f'<td class="num best"><strong>{escape(v)}</strong></td>' if best else f'<td class="num">{escape(v)}</td>'
                         for v, best in values)
        lines.append(f"<tr>{cells}</tr>")
    return "\n".join(lines + ["</tbody>", "</table>"])


def _figure(plot: bytes | str | None) -> str:
    """The plot inline as a data URI (no file beside the page), or the line saying why there is none."""
    if plot is None:
        return ""
    if isinstance(plot, str):
        return f'<p class="note">{escape(plot)}</p>\n'
    data = base64.b64encode(plot).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="perplexity against sparsity, one line per method '
            'and pattern"></figure>\n')


def _versions_section(versions: Mapping[str, str | None], generated: str) -> str:
    known = [(name, value) for name, value in versions.items() if value] + [("generated", generated)]
    cells = "\n".join(f"<tr><th>{escape(str(name))}</th><td>{escape(str(value))}</td></tr>" for name, value in known)
    return ('<section id="versions">\n<h2>Protocol and versions</h2>\n'
            "<p>Each table's protocol (model, evaluation data and windows or tasks, calibration, statistics) is its "
            "heading. The versions below are those of the zprune that wrote this page; the results store keeps "
            "each measurement's own.</p>\n"
            f'<table class="versions"><tbody>\n{cells}\n</tbody></table>\n</section>')
