"""The committed completion scripts equal what `zprune completions SHELL` prints.

If this fails after a change to the CLI, regenerate them: python completions/generate.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.cli.completions_cmd import FILE_NAMES, SHELLS, completion_script

COMPLETIONS = Path(__file__).resolve().parent.parent / "completions"
REGENERATE = "completion scripts are stale; regenerate them with: python completions/generate.py"


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_script_matches_the_app(shell):
    path = COMPLETIONS / FILE_NAMES[shell]
    assert path.is_file(), f"{path} is missing; {REGENERATE}"
    result = CliRunner().invoke(app, ["completions", shell])
    assert result.exit_code == 0, result.output
    assert result.stdout == path.read_text(encoding="utf-8"), REGENERATE
    assert completion_script(shell) == result.stdout  # deterministic


def test_scripts_call_back_into_zprune():
    assert "_ZPRUNE_COMPLETE=complete_bash" in completion_script("bash")
    assert completion_script("zsh").startswith("#compdef zprune")
    assert "complete --command zprune" in completion_script("fish")


@pytest.mark.parametrize(
    "words, cword, expected",
    [("zprune exp", 1, ["export"]), ("zprune export x --format sp", 4, ["sparse", "sparse-24-bitmask"]),
     ("zprune completions ", 2, list(SHELLS))],
)
def test_runtime_completion_answers_the_script(words, cword, expected):
    # What the bash script runs at completion time: the app, with _ZPRUNE_COMPLETE set.
    env = {"_ZPRUNE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = CliRunner().invoke(app, [], env=env, prog_name="zprune")
    assert result.exit_code == 0
    assert result.stdout.split() == expected


def test_unknown_shell_is_a_usage_error():
    result = CliRunner().invoke(app, ["completions", "powershell"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: unknown shell 'powershell' (use bash, zsh, fish)"]
