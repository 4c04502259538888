"""A re-run whose every cell is in the results store reads nothing of the model: no GGUF header, no tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import gguf.gguf_reader
import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.models import gguf_metadata

runner = CliRunner()


@pytest.fixture
def gguf_reads(monkeypatch):
    """How many times a GGUF file is opened and its header parsed (every reader transformers makes)."""
    reads = []
    real_init = gguf.gguf_reader.GGUFReader.__init__

    def counted(self, path, *args, **kwargs):
        reads.append(str(path))
        return real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.gguf_reader.GGUFReader, "__init__", counted)
    return reads


def fresh_process(monkeypatch) -> None:
    """Forget what this process parsed already (gguf_metadata keeps a header's metadata per process)."""
    monkeypatch.setattr(gguf_metadata, "_METADATA", {})


def test_a_cached_compare_and_eval_read_no_gguf(tiny_gguf, text_file, cache, gguf_reads, monkeypatch):
    grid = ["compare", str(tiny_gguf), "--method", "magnitude,wanda", "--sparsity", "0.5", "--data", str(text_file),
            "-n", "2", "-l", "16", "--eval", str(text_file), "--eval-seqlen", "32", "--max-windows", "3", "--json"]
    first = runner.invoke(app, grid)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["computed"] == 3 and gguf_reads  # the first run did read the file
    fresh_process(monkeypatch)
    gguf_reads.clear()
    again = runner.invoke(app, grid)
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert (data["computed"], data["skipped"]) == (0, 3)
    assert data["rows"] == json.loads(first.stdout)["rows"]
    assert gguf_reads == []
    evaluate = ["eval", str(tiny_gguf), "--eval", str(text_file), "--eval-seqlen", "32", "--max-windows", "3", "--json"]
    measured = runner.invoke(app, evaluate)  # the dense cell of the grid: already measured
    assert measured.exit_code == 0, measured.output
    assert json.loads(measured.stdout)["reused"] is True and gguf_reads == []


HEAVY = ("torch", "transformers", "gguf", "tokenizers", "safetensors.torch", "lm_eval", "datasets")


def imported_by(command: list[str], tmp_path: Path) -> set[str]:
    """The heavy libraries a fresh `zprune` process imports (this one has imported everything already)."""
    import os
    import subprocess
    import sys

    from peak_memory import RUN_ZPRUNE_MODULES

    report = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "MODULES_FILE": str(report)}
    result = subprocess.run([sys.executable, "-c", RUN_ZPRUNE_MODULES, *command], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(HEAVY) & set(json.loads(report.read_text()))


def test_a_cached_rerun_imports_no_torch(tiny_gguf, text_file, cache, tmp_path):
    """A fully cached `compare` of a GGUF model loads no library that reads tensors: `import torch` alone costs
    more than the whole re-run (tests/benchmarks/bench_rerun.py). Nor do `--help` and the stored leaderboard."""
    grid = ["compare", str(tiny_gguf), "--method", "magnitude,wanda,sparsegpt", "--sparsity", "0.5", "--data",
            str(text_file), "-n", "2", "-l", "16", "--eval", str(text_file), "--eval-seqlen", "32", "--max-windows", "2",
            "--device", "cpu", "-q"]
    first = runner.invoke(app, grid)
    assert first.exit_code == 0, first.output
    assert imported_by(grid, tmp_path) == set()
    assert imported_by(["--help"], tmp_path) == set()
    assert imported_by(["compare", "--show"], tmp_path) == set()
    assert "torch" in imported_by([*grid, "--force"], tmp_path)  # what computes does import it


def test_changed_model_files_forget_the_protocol(tiny_dir, text_file, tmp_path, cache):
    """A local folder's tokenizer or config changes without its weights changing: the remembered protocol
    is not used (the key holds every file of the folder)."""
    import shutil

    from zprune_cli.evaluation.run import EvalPlan, Evaluation, expected_protocols
    from zprune_cli.models.handle import ModelHandle

    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    plan = EvalPlan(Evaluation(data=str(text_file)))  # seqlen: the model's maximum
    before = expected_protocols(plan, ModelHandle(str(folder), "cpu"), cache)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    after = expected_protocols(plan, ModelHandle(str(folder), "cpu"), cache)
    [name] = before
    assert before[name].seqlen == 512 and after[name].seqlen == 16
    assert len(list((cache / "protocols").glob("*.json"))) == 2


def test_cache_gc_removes_exactly_the_protocols_of_changed_or_gone_models(tiny_dir, text_file, tmp_path, cache):
    """A remembered protocol whose model's files changed can never be read again (its key changed): `cache gc`
    removes it, and one whose model was deleted; the current one stays and is still read, not recomputed."""
    import shutil

    from zprune_cli.evaluation import protocol_cache
    from zprune_cli.evaluation.run import EvalPlan, Evaluation, expected_protocols
    from zprune_cli.models.handle import ModelHandle

    changed, kept, gone = (shutil.copytree(tiny_dir, tmp_path / name) for name in ("changed", "kept", "gone"))
    plan = EvalPlan(Evaluation(data=str(text_file)))
    records = {}
    for folder in (changed, kept, gone):
        before = set((cache / "protocols").glob("*.json"))
        expected_protocols(plan, ModelHandle(str(folder), "cpu"), cache)
        [records[folder.name]] = set((cache / "protocols").glob("*.json")) - before
    (changed / "tokenizer_config.json").write_text((changed / "tokenizer_config.json").read_text() + " ")
    shutil.rmtree(gone)
    assert protocol_cache.stale_records(cache) == sorted([records["changed"], records["gone"]])
    dry = runner.invoke(app, ["cache", "gc", "--dry-run", "--cache-dir", str(cache), "--json"])
    assert dry.exit_code == 0, dry.output
    assert sorted(r["name"] for r in json.loads(dry.stdout)["removed"]) == sorted([records["changed"].name, records["gone"].name])
    assert len(list((cache / "protocols").glob("*.json"))) == 3  # a dry run removes nothing
    result = runner.invoke(app, ["cache", "gc", "--cache-dir", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    assert list((cache / "protocols").glob("*.json")) == [records["kept"]]
    assert all(r["size_bytes"] > 0 for r in json.loads(result.stdout)["removed"])
    recomputed = []
    remembered = protocol_cache.remembered(cache, ModelHandle(str(kept), "cpu").source, _wanted(records["kept"]),
                                           lambda: recomputed.append(1) or {})
    assert recomputed == [] and remembered


def _wanted(record_path):
    return json.loads(record_path.read_text(encoding="utf-8"))["wanted"]


def test_a_gguf_load_builds_the_tensor_name_table_once(tiny_gguf, monkeypatch):
    """transformers maps GGUF tensor names by rebuilding gguf's name table once per submodule, recursively (397
    times for SmolLM2, 6 s of CPU a load); inside zprune's load it is built once, and the loaded weights are the
    file's. gguf's own function is back in place afterwards."""
    import gguf
    import numpy as np

    from zprune_cli.models.handle import ModelHandle

    builds = []
    original = gguf.get_tensor_name_map
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda *a: (builds.append(a), original(*a))[1])
    counted = gguf.get_tensor_name_map
    model = ModelHandle(str(tiny_gguf), "cpu", "float32").model
    assert len(builds) == 1 and len(list(model.modules())) > 10
    embedding = gguf.GGUFReader(str(tiny_gguf)).get_tensor(0)
    assert embedding.name == "token_embd.weight"
    assert np.array_equal(model.model.embed_tokens.weight.detach().numpy(), np.asarray(embedding.data))
    assert gguf.get_tensor_name_map is counted
