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


def test_the_test_command_needs_nothing_beside_the_clone():
    """A user who clones the repo has no ../shared and no data variable: the command must not name them."""
    test_command = readme_commands()[1]
    assert "shared" not in test_command and "ZPRUNE_DATA_DIR" not in test_command and "ZPRUNE_TEST_DATA" not in test_command


def test_ci_also_runs_the_fast_suite_from_a_fresh_clone_with_no_data_beside_it():
    ci = (REPO / ".ci" / "run").read_text()
    assert "git clone" in ci and "mktemp -d" in ci
    assert "env -u CI -u ZPRUNE_DATA_DIR -u ZPRUNE_TEST_DATA python -m pytest" in ci


def test_first_command_prunes_the_default_model():
    first = readme_commands()[0]
    assert "torch==2.13.0" in first and "zprune prune smollm2-135m" in first


def test_the_readme_counts_the_families_tests_test_families_runs():
    """Both of the README's counts (configurations and families) are what tests/test_families.py runs."""
    from conftest import FAMILIES, MORE_FAMILIES

    configurations = FAMILIES + MORE_FAMILIES
    families = {name.removesuffix("_vision") for name in configurations}  # Gemma 3's vision model: one family
    text = " ".join((REPO / "README.md").read_text().split())
    assert re.findall(r"(\d+) model configurations of (\d+) families", text) == [(str(len(configurations)), str(len(families)))]
    assert re.findall(r"all (\d+) configurations of `tests/test_families.py`", text) == [str(len(configurations))]
    assert not re.search(r"\d+ families of `tests/test_families.py`", text)
