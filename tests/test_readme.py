"""The README's commands are the ones CI runs."""

import re

from conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    test_command = readme_commands()[1]
    assert "pytest" in test_command
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_first_command_prunes_the_default_model():
    first = readme_commands()[0]
    assert "torch==2.13.0" in first and "zprune prune smollm2-135m" in first
