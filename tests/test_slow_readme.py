"""The README's main command, run as written (through the CLI), gives the perplexity the README states
and a model that still answers a simple factual prompt."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO
from zprune_cli.cli.app import app

pytestmark = pytest.mark.slow


def main_commands() -> list[list[str]]:
    """The zprune invocations of the README's first command (after the installs)."""
    first = re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())[0]
    return [shlex.split(part.strip())[1:] for part in first.split("&&") if part.strip().startswith("zprune ")]


def test_readme_main_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prune_args, eval_args = main_commands()
    runner = CliRunner()
    pruned = runner.invoke(app, prune_args)
    assert pruned.exit_code == 0, pruned.output
    report = runner.invoke(app, [*eval_args, "--json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    ppl = {m["metric"]: m["value"] for m in data["metrics"]}["ppl:wikitext2-sample"]
    dense = {m["metric"]: m["value"] for m in data["baseline"]["metrics"]}["ppl:wikitext2-sample"]
    stated = re.search(r"perplexity of about (\d+) \(dense: (\d+(?:\.\d+)?)\)", (REPO / "README.md").read_text())
    assert stated, "the README states the perplexity to expect"
    assert ppl == pytest.approx(float(stated.group(1)), rel=0.05) and dense == pytest.approx(float(stated.group(2)), rel=0.02)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / prune_args[prune_args.index("--out") + 1]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain transformers, as the README says
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0][ids.shape[1]:])
    assert "Paris" in answer, answer
