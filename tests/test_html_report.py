"""`compare --format html` and `--out`: the page read back with the stdlib HTML parser, and the file written whole."""

from __future__ import annotations

import base64
import errno
import html
import json
import os
import sys
from html.parser import HTMLParser

import pytest

import zprune_cli.base.staging as staging
from test_compare import cli_grid, invoke
from zprune_cli.base.errors import ZpruneError
from zprune_cli.records.leaderboard_cells import HEAD
from zprune_cli.rendering.plot import plot_image
from zprune_cli.rendering.report_html import leaderboard_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a reader of the page sees: headings, tables of cells (text, classes, bold), every src/href, and
    how many elements of each tag there are."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[str, str]] = []
        self.tables: list[dict] = []  # {"classes": set, "rows": [[cell, ...], ...]}
        self.urls: list[str] = []
        self.tags: dict[str, int] = {}
        self._cell: dict | None = None
        self._heading: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.urls += [attrs[name] or "" for name in ("src", "href") if name in attrs]
        classes = set((attrs.get("class") or "").split())
        if tag == "table":
            self.tables.append({"classes": classes, "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = {"tag": tag, "classes": classes, "text": "", "bold": False}
        elif tag == "strong" and self._cell is not None:
            self._cell["bold"] = True
        elif tag in ("h1", "h2"):
            self._heading = [tag, ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(self._cell)
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append((self._heading[0], self._heading[1]))
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._heading is not None:
            self._heading[1] += data

    @property
    def leaderboards(self) -> list[dict]:
        return [t for t in self.tables if "versions" not in t["classes"]]

    @property
    def versions(self) -> dict[str, str]:
        (table,) = [t for t in self.tables if "versions" in t["classes"]]
        return {row[0]["text"]: row[1]["text"] for row in table["rows"]}


def texts(table: dict) -> list[list[str]]:
    return [[cell["text"] for cell in row] for row in table["rows"]]


def best_cells(table: dict) -> set[tuple[int, str]]:
    """(body row index, column name) of every cell marked best; each must also be bold, and only those."""
    header = [cell["text"] for cell in table["rows"][0]]
    marked = set()
    for i, row in enumerate(table["rows"][1:]):
        for name, cell in zip(header, row):
            assert ("best" in cell["classes"]) == cell["bold"], (i, name, cell)
            if "best" in cell["classes"]:
                marked.add((i, name))
    return marked


def image_bytes(page: Page) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert all(url.startswith(prefix) for url in page.urls), page.urls
    return [base64.b64decode(url[len(prefix):], validate=True) for url in page.urls]


def row(method, pattern, sparsity, recipe, label, metrics, best=(), group=1, protocol="tiny; wikitext2 test, 2 windows",
        model="tiny"):
    return {"model": model, "method": method, "pattern": pattern, "sparsity": sparsity, "propagate": "dense" if recipe else "",
            "recipe": recipe, "label": label, "metrics": metrics, "group": group, "protocol": protocol, "best": list(best)}


HOSTILE = "<script>alert('x')</script>"


def hand_rows() -> list[dict]:
    """Two protocol groups; 2:4 and 50% unstructured compete separately; a label and a protocol carry markup."""
    return [
        row("dense", "", None, "", "dense", {"ppl:wikitext2": 20.0, "sparsity": 0.0}),
        row("wanda", "unstructured", 0.5, "3f2a9c1d77", f"wanda (owl, {HOSTILE})", {"ppl:wikitext2": 31.23456, "sparsity": 0.5},
            best=["ppl:wikitext2"]),
        row("magnitude", "unstructured", 0.5, "aa11bb22cc", "magnitude", {"ppl:wikitext2": 190.5, "sparsity": 0.5}),
        row("wanda", "2:4", 0.5, "0123456789", "wanda", {"ppl:wikitext2": 60.0, "acc:piqa": 0.6, "sparsity": 0.5}),
        row("magnitude", "2:4", 0.5, "9876543210", "magnitude", {"ppl:wikitext2": 55.5, "acc:piqa": 0.6, "sparsity": 0.5},
            best=["ppl:wikitext2"]),
        row("wanda", "unstructured", 0.5, "3f2a9c1d77", "wanda", {"ppl:wikitext2": 40.0}, best=["ppl:wikitext2"], group=2,
            protocol=f"tiny & co; c4 validation, 8 windows {HOSTILE}", model="tiny & co"),
        row("magnitude", "unstructured", 0.5, "aa11bb22cc", "magnitude", {"ppl:wikitext2": 41.0}, group=2,
            protocol=f"tiny & co; c4 validation, 8 windows {HOSTILE}", model="tiny & co"),
    ]


def test_page_from_hand_built_rows():
    rows = hand_rows()
    versions = {"zprune": "0.1.0", "torch": "2.13.0", "transformers": "5.0", "python": "3.11.7", "lm_eval": None}
    page_text = leaderboard_html(rows, plots={1: b"image one", 2: "No plot: matplotlib is missing."}, versions=versions,
                                 generated="2026-01-02T03:04:05+0000")
    page = Page(page_text)
    assert page.headings[0] == ("h1", "zprune leaderboard: tiny, tiny & co")  # the models, escaped and read back
    assert [text for tag, text in page.headings if tag == "h2"] == [rows[0]["protocol"], rows[-1]["protocol"],
                                                                    "Protocol and versions"]
    first, second = page.leaderboards  # one table per protocol group
    header = HEAD + ["ppl:wikitext2", "acc:piqa", "sparsity"]
    assert texts(first) == [
        header,
        ["tiny", "dense", "", "", "", "", "20.000", "", "0.0000"],
        ["tiny", "wanda", "unstructured", "0.5000", "dense", f"3f2a9c1d owl, {HOSTILE}", "31.235", "", "0.5000"],
        ["tiny", "magnitude", "unstructured", "0.5000", "dense", "aa11bb22", "190.500", "", "0.5000"],
        ["tiny", "wanda", "2:4", "0.5000", "dense", "01234567", "60.000", "0.600", "0.5000"],
        ["tiny", "magnitude", "2:4", "0.5000", "dense", "98765432", "55.500", "0.600", "0.5000"],
    ]
    assert texts(second)[0] == HEAD + ["ppl:wikitext2"] and len(second["rows"]) == 3
    assert best_cells(first) == {(1, "ppl:wikitext2"), (4, "ppl:wikitext2")}  # exactly the rows' `best`
    assert best_cells(second) == {(0, "ppl:wikitext2")}
    assert image_bytes(page) == [b"image one"]  # group 1's plot inline; group 2 says why it has none
    assert "No plot: matplotlib is missing." in page_text and page.tags.get("img") == 1
    assert page.versions == {"zprune": "0.1.0", "torch": "2.13.0", "transformers": "5.0", "python": "3.11.7",
                             "generated": "2026-01-02T03:04:05+0000"}  # an unknown version is left out


def test_markup_in_the_data_stays_text():
    page_text = leaderboard_html(hand_rows(), versions={"zprune": HOSTILE}, generated="now")
    page = Page(page_text)
    assert "script" not in page.tags and HOSTILE not in page_text
    assert "&lt;script&gt;" in page_text
    assert page.versions["zprune"] == HOSTILE


def test_no_external_address_and_no_script():
    page_text = leaderboard_html(hand_rows(), plots={1: PNG_SIGNATURE}, versions={}, generated="now")
    page = Page(page_text)
    assert page.urls and not [u for u in page.urls if "http://" in u or "https://" in u]
    assert "http://" not in page_text and "https://" not in page_text and "url(" not in page_text  # CSS included
    assert "script" not in page.tags and "link" not in page.tags


def test_no_rows_is_a_page_that_says_so():
    page = Page(leaderboard_html([], versions={"zprune": "0.1.0"}, generated="now"))
    assert page.headings[0] == ("h1", "zprune leaderboard: no results") and page.leaderboards == []


def test_plot_image_is_a_png():
    assert plot_image(hand_rows()[:5], "ppl:wikitext2")[:8] == PNG_SIGNATURE


# --- the command line ------------------------------------------------------------------------------------------

def md_tables(text: str) -> list[list[list[str]]]:
    """The markdown rendering's tables as cell texts, with its bold marks kept (**v**)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("| model |"):
            current = []
            tables.append(current)
        if current is not None and line.startswith("|") and not line.startswith("|---"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
    return tables


def as_md(table: dict) -> list[list[str]]:
    return [[f"**{c['text']}**" if c["bold"] else c["text"] for c in row] for row in table["rows"]]


@pytest.fixture
def two_groups(tiny_dir, text_file, cache):
    """The grid measured under two evaluation setups: two protocol groups in the store."""
    for windows in (1, 2):
        args = cli_grid(tiny_dir, text_file)
        args[args.index("--max-windows") + 1] = windows
        assert invoke(*args, "--json").exit_code == 0
    return json.loads(invoke("compare", "--show", "--format", "json").stdout)


def assert_page_matches(page: Page, rows: list[dict], md: str) -> None:
    """One table per group, the same cells and bold marks as markdown, the best marks of the rows' `best`."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    assert len(page.leaderboards) == len(groups) == len(md_tables(md))
    assert [as_md(t) for t in page.leaderboards] == md_tables(md)
    for table, group in zip(page.leaderboards, groups):
        members = [r for r in rows if r["group"] == group]
        header = [c["text"] for c in table["rows"][0]]
        assert best_cells(table) == {(i, m) for i, r in enumerate(members) for m in r["best"] if m in header}
    images = image_bytes(page)
    assert len(images) == len(groups) and all(image[:8] == PNG_SIGNATURE for image in images)


def test_show_as_html_to_a_file(two_groups, tmp_path):
    report = tmp_path / "reports" / "board.html"
    report.parent.mkdir()
    result = invoke("compare", "--show", "--format", "html", "--out", report)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"info: wrote the leaderboard (html) to {report}"]
    assert sorted(p.name for p in report.parent.iterdir()) == ["board.html"]  # no temporary file left
    assert sum(r["best"] != [] for r in two_groups) >= 2  # the test means something: marks to check
    assert_page_matches(Page(report.read_text()), two_groups, invoke("compare", "--show", "--format", "md").stdout)


def test_compare_writes_html(tiny_dir, text_file, cache, tmp_path):
    report = tmp_path / "grid.html"
    result = invoke(*cli_grid(tiny_dir, text_file), "--format", "html", "--out", report)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and str(report) in result.stderr
    rows = json.loads(invoke("compare", "--show", "--format", "json").stdout)
    assert_page_matches(Page(report.read_text()), rows, invoke("compare", "--show", "--format", "md").stdout)
    assert Page(report.read_text()).versions["zprune"] == "0.1.0"


def test_html_goes_to_stdout_without_out(two_groups):
    result = invoke("compare", "--show", "--format", "html")
    assert result.exit_code == 0 and result.stdout.startswith("<!DOCTYPE html>")
    assert len(Page(result.stdout).leaderboards) == 2


@pytest.mark.parametrize("fmt", ["md", "csv", "table", "json"])
def test_out_holds_what_stdout_would(two_groups, tmp_path, fmt):
    path = tmp_path / f"board.{fmt}"
    assert invoke("compare", "--show", "--format", fmt, "--out", path).exit_code == 0
    assert path.read_text() == invoke("compare", "--show", "--format", fmt).stdout


def test_json_flag_keeps_its_meaning_with_out(two_groups, tmp_path):
    path = tmp_path / "board.json"
    result = invoke("compare", "--show", "--json", "--out", path)
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(path.read_text()) == two_groups
    refused = invoke("compare", "--show", "--json", "--format", "html", "--out", path)  # --json is --format json
    assert refused.exit_code == 2 and "contradicts --format html" in one_error_line(refused)


def test_no_matplotlib_gives_a_note_not_a_crash(two_groups, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = invoke("compare", "--show", "--format", "html")
    assert result.exit_code == 0, result.output
    page = Page(result.stdout)
    assert len(page.leaderboards) == 2 and "img" not in page.tags
    assert html.unescape(result.stdout).count("No plot: plotting needs matplotlib: pip install 'zprune[plot]'.") == 2
    plotted = invoke("compare", "--show", "--plot", tmp_path / "ppl.png")  # --plot itself still refuses, in one line
    assert plotted.exit_code == 1 and plotted.stderr.strip().endswith("plotting needs matplotlib: pip install 'zprune[plot]'")


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_out_in_a_missing_folder_fails_before_the_grid_runs(tiny_dir, text_file, cache, tmp_path):
    missing = tmp_path / "nope" / "board.html"
    result = invoke(*cli_grid(tiny_dir, text_file), "--format", "html", "--out", missing)
    assert result.exit_code == 2 and "does not exist" in one_error_line(result)
    assert json.loads(invoke("compare", "--show", "--json").stdout) == []  # nothing was computed
    shown = invoke("compare", "--show", "--out", missing)
    assert shown.exit_code == 2 and "does not exist" in one_error_line(shown) and not missing.parent.exists()


def test_out_naming_a_folder_fails(cache, tmp_path):
    result = invoke("compare", "--show", "--out", tmp_path)
    assert result.exit_code == 2 and "is a folder" in one_error_line(result)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")
def test_out_in_a_read_only_folder_fails(cache, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        result = invoke("compare", "--show", "--out", folder / "board.md")
        assert result.exit_code == 2 and "not writable" in one_error_line(result)
    finally:
        folder.chmod(0o700)


def disk_full_on(monkeypatch, name: str) -> None:
    """The rename onto `name` fails as on a full disk (after the temporary file was written); other renames work."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        real(src, dst)

    monkeypatch.setattr(staging.os, "replace", replace)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    dest = tmp_path / "board.html"
    dest.write_text("old")
    staging.write_file_atomically(dest, b"new")
    assert dest.read_text() == "new" and os.listdir(tmp_path) == ["board.html"]
    disk_full_on(monkeypatch, "board.html")
    with pytest.raises(ZpruneError, match=f"cannot write {dest}: No space left on device"):
        staging.write_file_atomically(dest, b"newer")
    assert dest.read_text() == "new" and os.listdir(tmp_path) == ["board.html"]


def test_a_failed_write_through_the_cli_is_one_line(two_groups, tmp_path, monkeypatch):
    disk_full_on(monkeypatch, "board.html")
    result = invoke("compare", "--show", "--format", "html", "--out", tmp_path / "board.html")
    assert result.exit_code == 1 and "No space left on device" in one_error_line(result)
    assert "board.html" not in os.listdir(tmp_path) and not [p for p in os.listdir(tmp_path) if "zprune-tmp" in p]
