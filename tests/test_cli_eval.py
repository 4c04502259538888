"""`zprune eval` through the CLI runner: stored results, the paper protocol, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.records.results import ResultsStore, results_path

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_records_perplexity(tiny_dir, text_file, cache):
    result = invoke("eval", tiny_dir, "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 3, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ppl = next(m for m in report["metrics"] if m["metric"] == "ppl:corpus.txt")
    assert ppl["protocol"]["n_windows"] == 3 and ppl["protocol"]["seqlen"] == 64
    assert math.isfinite(ppl["value"]) and ppl["value"] > 1
    rows = ResultsStore(results_path(cache)).query(metric="ppl:corpus.txt")
    assert len(rows) == 1 and rows[0].value == pytest.approx(ppl["value"]) and rows[0].method == "dense"


def test_eval_table_shows_the_perplexity_interval_of_its_windows(tiny_dir, text_file, cache):
    """The table's 95% interval is intervals.ppl_interval of the window NLLs the JSON (and the store) keep; the
    perplexity is exp of their mean, inside it. The second run reads the store and shows the same."""
    from zprune_cli.records.intervals import ppl_interval

    args = ["eval", tiny_dir, "--eval", text_file, "--eval-seqlen", 32, "--max-windows", 4]
    ppl = next(m for m in json.loads(invoke(*args, "--json").stdout)["metrics"] if m["metric"] == "ppl:corpus.txt")
    nlls = ppl["detail"]["window_nll"]
    assert len(nlls) == 4 and ppl["value"] == pytest.approx(math.exp(sum(nlls) / 4), rel=1e-5)
    low, high = ppl_interval(nlls)
    assert low < ppl["value"] < high
    table = invoke(*args)
    assert table.exit_code == 0, table.output
    assert "95% interval" in table.stdout and f"[{low:.3f}, {high:.3f}]" in table.stdout


def test_eval_of_a_pruned_folder_with_baseline(tiny_dir, text_file, cache, tmp_path):
    pruned = tmp_path / "pruned"
    assert invoke("prune", tiny_dir, "-m", "magnitude", "--data", text_file, "-n", 2, "-l", 16, "--out", pruned).exit_code == 0
    result = invoke("eval", pruned, "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 2, "--baseline", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["provenance"]["method"] == "magnitude"
    sparsity = {m["metric"]: m["value"] for m in report["metrics"]}["sparsity"]
    assert sparsity == pytest.approx(0.5)
    base = {m["metric"]: m["value"] for m in report["baseline"]["metrics"]}
    assert base["sparsity"] < 0.01 and base["ppl:corpus.txt"] != report["metrics"][0]["value"]
    table = invoke("eval", pruned, "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 2, "--baseline")
    assert "dense" in table.stdout and "magnitude" in table.stdout


def one_line(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_bad_input(tiny_dir, text_file, tmp_path, cache, monkeypatch):
    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    assert "beyond the model's maximum" in one_line(invoke("eval", tiny_dir, "--eval", text_file, "--eval-seqlen", 100000), 2)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert "empty" in one_line(invoke("eval", tiny_dir, "--eval", empty), 2)
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    assert "too short" in one_line(invoke("eval", tiny_dir, "--eval", short, "--eval-seqlen", 500), 1)
    line = one_line(invoke("eval", tiny_dir, "--eval", "wikitext2", "--eval-seqlen", 64), 1)
    assert "--data-dir" in line or "ZPRUNE_DATA_DIR" in line
    line = one_line(invoke("eval", tiny_dir, "--eval", "none", "--tasks", "arc_easy_locl", "--tasks-dir", tmp_path), 2)
    assert "arc_easy_local" in line
    assert "--baseline" in one_line(invoke("eval", tiny_dir, "--eval", text_file, "--baseline"), 2)


def test_eval_reads_a_sparse_export_bit_identically(tiny_dir, text_file, cache, tmp_path):
    pruned, sparse = tmp_path / "pruned", tmp_path / "sparse"
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", pruned).exit_code == 0
    assert invoke("export", pruned, "--to", sparse, "--format", "sparse").exit_code == 0
    args = ["--eval", text_file, "--eval-seqlen", 64, "--max-windows", 2, "--json"]
    dense_report = json.loads(invoke("eval", pruned, *args).stdout)
    sparse_report = json.loads(invoke("eval", sparse, *args).stdout)
    assert dense_report["metrics"][0]["value"] == sparse_report["metrics"][0]["value"]


def test_eval_fills_the_model_card_from_the_results_store(tiny_dir, text_file, cache, tmp_path):
    pruned = tmp_path / "pruned"
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", pruned).exit_code == 0
    assert "Measured results" not in (pruned / "README.md").read_text()
    report = json.loads(invoke("eval", pruned, "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 2, "--json").stdout)
    ppl = next(m for m in report["metrics"] if m["metric"] == "ppl:corpus.txt")["value"]
    results = json.loads((pruned / "zprune.json").read_text())["results"]
    assert results["ppl:corpus.txt"]["value"] == pytest.approx(ppl) and results["ppl:corpus.txt"]["protocol"]["n_windows"] == 2
    card = (pruned / "README.md").read_text()
    assert "## Measured results" in card and f"{ppl:.4g}" in card and "n_windows 2" in card
    # the results belong to this recipe's cell: rows carry its digest
    rows = ResultsStore(results_path(cache)).query(metric="ppl:corpus.txt")
    assert rows[-1].recipe == json.loads((pruned / "zprune.json").read_text())["recipe_digest"]


def test_baseline_is_found_from_another_folder(tiny_dir, text_file, cache, tmp_path, monkeypatch):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_dir, base)
    monkeypatch.chdir(tmp_path)
    assert invoke("prune", "base", "-m", "magnitude", "--data", text_file, "-n", 2, "-l", 16, "--out", "pruned").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "base").mkdir(parents=True)  # a different "base" where the relative path now points
    monkeypatch.chdir(elsewhere)
    result = invoke("eval", tmp_path / "pruned", "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 1, "--baseline", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["baseline"]["target"] == str(base)
    shutil.rmtree(base)
    line = one_line(invoke("eval", tmp_path / "pruned", "--eval", text_file, "--baseline"), 1)
    assert f"in none of its places: nothing at {base}; --baseline measures no other model in its place" in line


def test_load_pretrained_returns_the_model(tiny_dir, text_file, cache, tmp_path):
    import zprune_cli as zp

    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", tmp_path / "p").exit_code == 0
    model = zp.load_pretrained(tmp_path / "p")
    assert isinstance(model, __import__("torch").nn.Module) and zp.load_tokenizer(tmp_path / "p") is not None


def test_prune_and_eval_count_sparsity_over_the_same_layers(tiny_dir, text_file, cache, tmp_path):
    pruned = tmp_path / "pruned"
    result = invoke("prune", tiny_dir, "-m", "wanda", "--ignore", r"mlp\.", "--data", text_file, "-n", 2, "-l", 16,
                    "--out", pruned, "--json")
    assert result.exit_code == 0, result.output
    pruned_overall = json.loads(result.stdout)["overall_sparsity"]
    report = json.loads(invoke("eval", pruned, "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 1, "--json").stdout)
    evaluated = {m["metric"]: m for m in report["metrics"]}["sparsity"]
    assert pruned_overall == pytest.approx(0.5) and evaluated["value"] == pytest.approx(pruned_overall)  # not diluted by mlp


def test_eval_reuses_stored_results_unless_forced(tiny_dir, text_file, cache, monkeypatch):
    import zprune_cli.models.handle as handle

    loads = []
    real = handle.load_model
    monkeypatch.setattr(handle, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    args = ["eval", tiny_dir, "--eval", text_file, "--eval-seqlen", 64, "--max-windows", 2, "--json"]
    first = json.loads(invoke(*args).stdout)
    second = json.loads(invoke(*args).stdout)
    assert not first["reused"] and second["reused"] and len(loads) == 1
    value = {m["metric"]: m["value"] for m in first["metrics"]}
    assert {m["metric"]: m["value"] for m in second["metrics"]} == value
    forced = json.loads(invoke(*args, "--force").stdout)
    assert not forced["reused"] and len(loads) == 2
    other = json.loads(invoke(*args[:-2], 1, "--json").stdout)  # another protocol: measured
    assert not other["reused"] and len(loads) == 3


# --- eval with no flags: the papers' wikitext-2 perplexity, or offline its shipped sample --------------------
def _ppl(result) -> dict:
    assert result.exit_code == 0, result.output
    return next(m for m in json.loads(result.stdout)["metrics"] if m["metric"].startswith("ppl:"))


def test_eval_with_no_flags_measures_wikitext2_perplexity(tiny_dir, cache, monkeypatch):
    """Offline with no local copy: the shipped wikitext2-sample, said in one warning; with a local copy (the test
    slice is byte for byte the shipped sample) the papers' wikitext2 test split, no warning, the same number."""
    from conftest import FIXTURE_DATA

    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    offline = invoke("eval", tiny_dir, "--max-windows", 3, "--json")
    ppl = _ppl(offline)
    assert ppl["metric"] == "ppl:wikitext2-sample" and ppl["protocol"]["dataset"] == "wikitext2-sample"
    assert ppl["protocol"]["n_windows"] == 3 and ppl["protocol"]["seqlen"] == 512  # min(2048, the model's 512)
    warnings = [line for line in offline.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "measuring the shipped wikitext2-sample instead" in warnings[0]
    assert "wikitext2/wiki.test.raw" in warnings[0]
    named = _ppl(invoke("eval", tiny_dir, "--eval", "wikitext2-sample", "--max-windows", 3, "--json", "--force"))
    assert named["value"] == ppl["value"]

    local = invoke("eval", tiny_dir, "--max-windows", 3, "--json", "--data-dir", FIXTURE_DATA)
    full = _ppl(local)
    assert full["metric"] == "ppl:wikitext2" and full["protocol"]["split"] == "test" and "warning" not in local.stderr
    assert full["value"] == ppl["value"]


def test_eval_default_reads_the_hub_when_it_answers(monkeypatch):
    """Online (the hub's loader stubbed): wikitext2 itself, loaded once, no sample."""
    from zprune_cli.data import sources
    from zprune_cli.evaluation.run import EvalPlan, Evaluation

    calls = []
    monkeypatch.setattr(sources, "_load_dataset", lambda what, *a, **k: calls.append(what) or {"text": ["a", "b"]})
    [source] = EvalPlan(Evaluation()).sources
    assert (source.name, source.split, source.where) == ("wikitext2", "test", "hub:wikitext/wikitext-2-raw-v1")
    assert source.load().stream == "a\n\nb" and source.load().stream == "a\n\nb"
    assert calls == [("wikitext2", "test")]


def test_a_named_wikitext2_still_fails_offline_with_the_fix(tiny_dir, cache, monkeypatch):
    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    line = one_line(invoke("eval", tiny_dir, "--eval", "wikitext2", "--max-windows", 2), 1)
    assert "wikitext2/wiki.test.raw" in line and "--data-dir" in line


def test_sparsity_reads_the_same_in_the_header_and_the_table():
    from zprune_cli.cli.eval_cmd import metrics_table
    from zprune_cli.cli.output import text_console
    from zprune_cli.evaluation.run import EvalReport, Metric
    from zprune_cli.records.protocol import OpenProtocol

    report = EvalReport("runs/w40", [Metric("sparsity", 0.399999, OpenProtocol.of({"over": "pruned layers"}))], reused=False,
                        provenance={"method": "wanda", "pattern": "unstructured", "base_model": "tiny",
                                    "overall_sparsity": 0.399999, "recipe": "0123abcd"})
    console = text_console()
    console.print(metrics_table(report))
    text = console.file.getvalue()
    assert "sparsity 0.4000, recipe" in text and "0.399999" not in text
    row = next(line for line in text.splitlines() if line.split("│")[1:2] and line.split("│")[1].strip() == "sparsity")
    assert row.split("│")[2].strip() == "0.4000"
