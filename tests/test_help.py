"""The top-level help: every registered method, examples that parse, and one meaning for compare's
--json / --format."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from zprune_cli.cli.app import app, root_help
from zprune_cli.methods import METHODS, method_names
from zprune_cli.methods.base import Method

runner = CliRunner()


def test_top_level_help_lists_every_method_with_examples():
    text = runner.invoke(app, ["--help"]).stdout
    listed = re.findall(r"^    (\w+) +\S", text.split("Methods")[1].split("Examples")[0], re.M)
    assert listed == method_names() and "alps" in listed
    examples = [line.strip() for line in text.split("Examples:")[1].splitlines() if line.strip().startswith("zprune ")]
    commands = {line.split()[1] for line in examples}
    assert len(examples) >= 5 and {"prune", "eval", "compare", "export", "cache"} <= commands


def test_every_example_names_real_options():
    for line in root_help().split("Examples:")[1].splitlines():
        words = line.split("#")[0].split()
        if words[:1] != ["zprune"]:
            continue
        command_help = runner.invoke(app, [*words[1:2], "--help"]).stdout
        for flag in (w for w in words if w.startswith("--")):
            assert re.search(rf"{flag}\b", command_help), (line, flag)


def test_a_new_method_appears_by_itself(monkeypatch):
    class Pruner(Method):
        title = "New pruner (Someone, 2026)"
        name = "newmethod"
        default_scope = "row"

    monkeypatch.setitem(METHODS, "newmethod", Pruner)
    lines = root_help().splitlines()
    assert "  newmethod  New pruner (Someone, 2026)" in lines
    assert "  wanda      Wanda (Sun et al., 2023)" in lines  # no title: its module docstring's, to the colon


def test_compare_json_is_format_json(monkeypatch, tmp_path):
    monkeypatch.setenv("ZPRUNE_HOME", str(tmp_path))
    text = " ".join(runner.invoke(app, ["compare", "--help"]).stdout.split())
    assert "--json The same as --format json" in text and "json (what --json means)" in text
    shown = [runner.invoke(app, args) for args in (["compare", "--show", "--json"], ["--json", "compare", "--show"],
                                                   ["compare", "--show", "--format", "json"])]
    assert [r.exit_code for r in shown] == [0, 0, 0] and len({r.stdout for r in shown}) == 1
    refused = runner.invoke(app, ["--json", "compare", "--show", "--format", "md"])
    assert refused.exit_code == 2 and refused.stderr.splitlines() == [
        "error: --json means --format json and contradicts --format md; give one of the two"]
