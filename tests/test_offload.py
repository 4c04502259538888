"""`--offload disk`: decoder blocks read from safetensors only while they run. Results equal the
in-memory run bit for bit; the tracked peak of materialised block weights does not grow with depth."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import byte_tokenizer, tiny_config
from zprune_cli import calibrate, prune
from zprune_cli.cli.app import app
from zprune_cli.models.offload import TRACKER
from zprune_cli.verbs.partial import partial_folder
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration, Settings

RECIPES = {"wanda": PruneRecipe(method="wanda", sparsity=0.5),  # dense propagation: statistics from the store
           "sparsegpt": PruneRecipe(method="sparsegpt", sparsity=0.5, propagate="pruned"),
           # the producers' probes replay projections of a block that is read from disk only while it runs
           "wanda-permuted": PruneRecipe(method="wanda", pattern="2:4", permute="lsa")}


def save_llama(folder, n_blocks: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(n_blocks)
    config = tiny_config("llama")
    config.num_hidden_layers = n_blocks
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def block_bytes(folder) -> int:
    """The bytes of one decoder block's parameters, read from the checkpoint."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).numel() * 4 for k in f.keys() if k.startswith("model.layers.0."))


@pytest.fixture(scope="module")
def depths(tmp_path_factory):
    return {n: save_llama(tmp_path_factory.mktemp(f"llama{n}"), n) for n in (3, 12)}


def run(folder, offload: str, recipe: str, tmp_path, text_file):
    """Calibrate and prune (saved) in one fresh store; returns (calibration entry, saved state, report, peak)."""
    from transformers import AutoModelForCausalLM

    settings = Settings(cache_dir=tmp_path / f"cache-{offload}", device="cpu", dtype="float32", offload=offload)
    calibration = Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    TRACKER.reset()
    entry = calibrate(str(folder), calibration, gram=True, settings=settings).entry
    out = tmp_path / f"out-{offload}"
    [outcome] = prune(str(folder), RECIPES[recipe], calibration=calibration, out=out, settings=settings)
    state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    return entry, state, outcome.report, TRACKER.peak


def assert_same_stats(a, b, n_blocks: int) -> None:
    for x, y in zip(a.inputs(), b.inputs()):
        assert torch.equal(x, y)
    for index in range(n_blocks):
        sa, sb = a.block_stats(index), b.block_stats(index)
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name].sumsq, sb[name].sumsq)
            assert (sa[name].gram is None) == (sb[name].gram is None)
            assert sa[name].gram is None or torch.equal(sa[name].gram, sb[name].gram)


@pytest.mark.parametrize("mode", ["disk", "cpu"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_offload_equals_in_memory_and_peak_is_one_block(depths, recipe, mode, tmp_path, text_file):
    """--offload cpu copies each block even on this CPU-only machine, so a pruned block that were not written
    back to host memory would be lost and the saved weights would differ."""
    peaks = {}
    for n, folder in depths.items():
        entry, state, report, _ = run(folder, "none", recipe, tmp_path / f"mem{n}", text_file)
        off_entry, off_state, off_report, peaks[n] = run(folder, mode, recipe, tmp_path / f"{mode}{n}", text_file)
        assert_same_stats(entry, off_entry, n)
        assert state.keys() == off_state.keys()
        assert all(torch.equal(state[k], off_state[k]) for k in state), "saved weights differ"
        assert report.layers == off_report.layers and 0.45 < off_report.overall < 0.55
    one = block_bytes(depths[3])
    assert 0 < peaks[3] <= one and peaks[12] <= one  # never more than the block that runs
    assert peaks[12] - peaks[3] < one


def test_offloaded_save_is_sharded_by_block(depths, tmp_path, text_file):
    run(depths[3], "disk", "wanda", tmp_path, text_file)
    index = json.loads((tmp_path / "out-disk" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 4  # 3 blocks + the weights outside them
    assert index["model.layers.2.mlp.up_proj.weight"] != index["model.layers.1.mlp.up_proj.weight"]
    assert json.loads((tmp_path / "out-disk" / "zprune.json").read_text())["recipe"]["method"] == "wanda"


def test_cli_prune_offload(depths, tmp_path, text_file):
    out = tmp_path / "pruned"
    result = CliRunner().invoke(app, ["prune", str(depths[3]), "--offload", "disk", "--method", "wanda", "--data",
                                      str(text_file), "-n", "2", "-l", "16", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert 0.45 < json.loads(result.stdout)["overall_sparsity"] < 0.55 and (out / "config.json").is_file()


@pytest.mark.parametrize("command", ["calibrate", "prune"])
def test_refuses_gguf_and_bin(tmp_path, command):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    binary = tmp_path / "bin-model"
    binary.mkdir()
    tiny_config("llama").save_pretrained(binary)
    torch.save({}, binary / "pytorch_model.bin")
    for model, words in ((gguf, "is a GGUF file"), (binary, "has no model.safetensors")):
        result = CliRunner().invoke(app, [command, str(model), "--offload", "disk", "--data", "self", "-n", "1", "-l", "8"])
        assert result.exit_code == 2, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_unknown_offload_mode(tiny_dir):
    result = CliRunner().invoke(app, ["calibrate", str(tiny_dir), "--offload", "ram"])
    assert result.exit_code == 2 and "unknown --offload 'ram'" in result.output


def test_sharded_checkpoint_and_tied_head(tmp_path, text_file):
    """An index-json checkpoint (zprune's own offloaded output) and a tied LM head read block by block."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "tied"
    torch.manual_seed(1)
    config = tiny_config("llama")
    config.tie_word_embeddings = True
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    _, state, _, _ = run(folder, "none", "wanda", tmp_path / "mem", text_file)
    _, off_state, _, _ = run(folder, "disk", "wanda", tmp_path / "disk", text_file)
    assert all(torch.equal(state[k], off_state[k]) for k in state)
    sharded = tmp_path / "disk" / "out-disk"
    assert "lm_head.weight" not in json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    settings = {o: Settings(cache_dir=tmp_path / f"again-{o}", device="cpu", dtype="float32", offload=o) for o in ("none", "disk")}
    calibration = Calibration(data=str(text_file), nsamples=2, seqlen=16, seed=0)
    mem, disk = (calibrate(str(sharded), calibration, settings=settings[o]).entry for o in ("none", "disk"))
    assert_same_stats(mem, disk, 2)


def test_bfloat16_forward_matches_whole_model(tiny_dir):
    """Buffers (rotary inv_freq) are cast as a whole-model load casts them, so half precision matches too."""
    from zprune_cli.models.handle import ModelHandle

    whole = ModelHandle(str(tiny_dir), "cpu", "bfloat16").model
    offloaded = ModelHandle(str(tiny_dir), "cpu", "bfloat16", offload="disk").model
    ids = torch.arange(2, 30)[None]
    with torch.no_grad():
        assert torch.equal(whole(ids).logits, offloaded(ids).logits)
    assert all(p.is_meta for p in offloaded.model.layers.parameters())  # released after the forward


# --- evaluation block by block -------------------------------------------------------------------------------


def eval_ppl(folder, offload: str, text_file, tmp_path, **extra) -> tuple[dict, int]:
    """(metrics by name, tracked peak of block weights) of one fresh evaluation."""
    from zprune_cli import evaluate
    from zprune_cli.evaluation.run import Evaluation

    settings = Settings(cache_dir=tmp_path / f"eval-{offload}", device="cpu", dtype="float32", offload=offload)
    TRACKER.reset()
    report = evaluate(str(folder), Evaluation(data=(str(text_file),), seqlen=20, max_windows=5, **extra), settings=settings)
    return {m.name: m.value for m in report.metrics}, TRACKER.peak


def test_offloaded_perplexity_equals_whole_model_and_holds_one_block(depths, text_file, tmp_path):
    for n, folder in depths.items():
        whole, _ = eval_ppl(folder, "none", text_file, tmp_path / f"m{n}")
        disk, peak = eval_ppl(folder, "disk", text_file, tmp_path / f"d{n}")
        assert disk["ppl:corpus.txt"] == whole["ppl:corpus.txt"]  # bit for bit: the same ops, one window at a time
        assert disk["sparsity"] == whole["sparsity"] and 0 < peak <= block_bytes(folder)


@pytest.mark.parametrize("family", ["gemma3", "gpt2", "phi3"])  # per-layer kwargs, Conv1D, fused projections
def test_offloaded_perplexity_other_families(family, text_file, tmp_path):
    from conftest import save_tiny

    folder = save_tiny(tmp_path / family, family)
    whole, _ = eval_ppl(folder, "none", text_file, tmp_path / "m")
    disk, peak = eval_ppl(folder, "disk", text_file, tmp_path / "d")
    assert disk["ppl:corpus.txt"] == whole["ppl:corpus.txt"] and peak > 0


def test_offloaded_eval_of_an_offloaded_prune(depths, tmp_path, text_file):
    """A 12-block model pruned and saved block by block, then evaluated block by block: the pruned
    perplexity and 50% sparsity equal the in-memory evaluation of the same folder."""
    _, _, report, _ = run(depths[12], "disk", "wanda", tmp_path, text_file)
    out = tmp_path / "out-disk"
    whole, _ = eval_ppl(out, "none", text_file, tmp_path / "m")
    disk, peak = eval_ppl(out, "disk", text_file, tmp_path / "d")
    assert disk["ppl:corpus.txt"] == whole["ppl:corpus.txt"] and peak <= block_bytes(depths[12])
    assert disk["sparsity"] == whole["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_offloaded_compare_measures_each_block_as_it_is_pruned(depths, tmp_path, text_file):
    """compare --offload disk: every cell pruned from the checkpoint and measured block by block gives the
    in-memory grid's perplexities and sparsities, bit for bit, holding one block at a time."""
    from zprune_cli import compare
    from zprune_cli.verbs.comparison import grid_recipes
    from zprune_cli.evaluation.run import Evaluation

    recipes = [*grid_recipes("magnitude,wanda", "0.5", "unstructured,2:4"),
               *grid_recipes("sparsegpt", "0.6", "unstructured", propagate="pruned")]
    calibration = Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    evaluation = Evaluation(data=(str(text_file),), seqlen=20, max_windows=4)
    rows = {}
    for offload in ("none", "disk"):
        settings = Settings(cache_dir=tmp_path / offload, device="cpu", dtype="float32", offload=offload)
        TRACKER.reset()
        outcome = compare(str(depths[12]), recipes, evaluation, calibration=calibration, settings=settings)
        assert outcome.computed == len(recipes) + 1
        rows[offload] = {r["label"]: r["metrics"] for r in outcome.rows}
    assert 0 < TRACKER.peak <= block_bytes(depths[12])
    assert rows["disk"] == rows["none"] and len(rows["disk"]) == len(recipes) + 1
    assert len({m["ppl:corpus.txt"] for m in rows["disk"].values()}) == len(recipes) + 1  # the cells differ


def test_offloaded_compare_refuses_zero_shot(depths, cache):
    result = CliRunner().invoke(app, ["compare", str(depths[3]), "--method", "wanda", "--offload", "disk", "--tasks", "piqa_local"])
    assert result.exit_code == 2 and "without --offload" in result.output, result.output


def test_offloaded_prune_of_several_methods_with_owl_equals_in_memory(depths, tmp_path, text_file):
    """Several methods in one offloaded prune (each reads the dense blocks again) and OWL (every block read
    for its outlier score first) save the weights the in-memory run saves, bit for bit."""
    from transformers import AutoModelForCausalLM

    recipes = [PruneRecipe(method=m, sparsity=0.6, allocation="owl", owl_lambda=0.1) for m in ("wanda", "ria")]
    calibration = Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    saved = {}
    for offload in ("none", "disk"):
        settings = Settings(cache_dir=tmp_path / f"c-{offload}", device="cpu", dtype="float32", offload=offload)
        TRACKER.reset()
        outcomes = prune(str(depths[12]), recipes, calibration=calibration, out=tmp_path / offload, settings=settings)
        saved[offload] = {o.report.recipe.method: AutoModelForCausalLM.from_pretrained(o.out).state_dict() for o in outcomes}
    assert 0 < TRACKER.peak <= block_bytes(depths[12])
    for method, state in saved["none"].items():
        assert all(torch.equal(state[k], saved["disk"][method][k]) for k in state), method
    layers = [k for k in state if k.endswith("proj.weight")]
    ratios = {float((state[k] == 0).float().mean()) for k in layers}
    assert len(ratios) > 2  # OWL gave the blocks different sparsities


def test_offloaded_eval_refuses_whole_model_work(depths, cache):
    result = CliRunner().invoke(app, ["eval", str(depths[3]), "--offload", "disk", "--tasks", "piqa_local"])
    assert result.exit_code == 2 and "run them without --offload" in result.output
    assert result.output.count("\n") == 1


# --- a disk that fills while the blocks are written ---------------------------------------------------------
# A full disk reaches us two ways: Python's own writes raise OSError(ENOSPC); safetensors' Rust writer raises
# SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)") (measured with
# safetensors 0.8 on a full tmpfs), which is no OSError.
def disk_full(flavour: str) -> Exception:
    if flavour == "safetensors":
        from safetensors import SafetensorError

        return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    return OSError(errno.ENOSPC, "No space left on device")


def fill_disk_after(monkeypatch, module, n_files: int, flavour: str, prefix: str = "") -> list[str]:
    """`module.save_file` writes n_files files named `prefix`..., then leaves a partial file and fails as a full
    disk does (files named otherwise are written as usual)."""
    real, written = module.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        if not Path(filename).name.startswith(prefix):
            return real(tensors, filename, *args, **kwargs)
        written.append(str(filename))
        if len(written) > n_files:
            Path(filename).write_bytes(b"partial")
            raise disk_full(flavour)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(module, "save_file", save_file)
    return written


def one_error_line(result) -> str:
    """Exit 1 with exactly one line on stderr, an error, and no traceback anywhere."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def staging_left(folder: Path) -> list[str]:
    """Temporary folders of a staged output (.NAME.zprune-tmp-*) or of a store entry (.tmp-*)."""
    return [p.name for p in folder.rglob("*") if ".zprune-tmp-" in p.name or p.name.startswith(".tmp-")]


def complete_entries(cache: Path) -> list[str]:
    """The store's entry folders, each of which must open with a verified manifest (no half-written one)."""
    from zprune_cli.stats.store import StatsStore

    entries = StatsStore(cache).entries()
    assert all(problem is None for _, _, problem in entries), entries
    return sorted(path.name for path, _, _ in entries)


def prune_offloaded(model, out: Path, method: str, text_file, *extra):
    return CliRunner().invoke(app, ["prune", str(model), "--offload", "disk", "--method", method, "--data",
                                    str(text_file), "-n", "2", "-l", "16", "--out", str(out), *extra])


@pytest.mark.parametrize("flavour", ["os", "safetensors"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])  # sparsegpt also writes its propagated statistics meanwhile
@pytest.mark.parametrize("previous", [False, True], ids=["new-out", "overwrite"])
def test_disk_full_while_streaming_blocks(depths, method, flavour, previous, tmp_path, text_file, cache, monkeypatch):
    import safetensors.torch

    out = tmp_path / "outputs" / "pruned"
    if previous:  # an earlier complete output, to be kept whole when its replacement fails
        out.mkdir(parents=True)
        (out / "config.json").write_text('{"earlier": true}')
    with monkeypatch.context() as full:
        written = fill_disk_after(full, safetensors.torch, 1, flavour, "model-")  # block 0's shard, then full
        result = prune_offloaded(depths[3], out, method, text_file, *(["--overwrite"] if previous else []))
    # the one line names the folder asked for, as the in-memory save does (staging.staged_folder), and where the
    # finished block is kept for the same command to resume from
    partial = partial_folder(out)
    assert one_error_line(result) == (f"error: writing {out} failed: the disk is full; free space or point --cache-dir "
                                      f"/ --out elsewhere; 1 of 3 blocks finished are kept in {partial}, and the same "
                                      "command resumes from block 1 (remove that folder to start over)")
    assert [Path(f).name for f in written] == ["model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors"]
    if previous:
        assert [p.name for p in out.iterdir()] == ["config.json"] and "earlier" in (out / "config.json").read_text()
    else:
        assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == sorted([partial.name, *(["pruned"] if previous else [])])
    assert not staging_left(tmp_path / "outputs") and not staging_left(cache)
    before = complete_entries(cache)  # the calibration entry, complete; a propagated one never appears
    assert len(before) == 1

    # room again: the same command resumes from block 1 and completes (no lock or staging folder in its way)
    again = prune_offloaded(depths[3], out, method, text_file, "--overwrite")
    assert again.exit_code == 0 and "resuming the prune left in" in again.stderr
    assert (out / "model.safetensors.index.json").is_file() and not partial.exists()
    assert sorted(p.name for p in (out.parent).iterdir()) == ["pruned"]
    # a resumed propagating run keeps no statistics: they were collected partly by the process that stopped
    assert len(complete_entries(cache)) == len(before)


@pytest.mark.parametrize("flavour", ["os", "safetensors"])
def test_disk_full_while_calibrating_offloaded(depths, flavour, text_file, cache, monkeypatch):
    import safetensors.torch  # the statistics store's writer (bound lazily there)

    written = fill_disk_after(monkeypatch, safetensors.torch, 2, flavour)  # inputs and block 0, then full at block 1
    args = ["calibrate", str(depths[3]), "--offload", "disk", "--data", str(text_file), "-n", "2", "-l", "16"]
    assert one_error_line(CliRunner().invoke(app, args)).startswith(f"error: writing statistics to {cache} failed: the disk "
                                                                    "is full; free space")
    assert [Path(f).name for f in written][-1] == "block_001.safetensors"
    assert not staging_left(cache) and complete_entries(cache) == []


def test_replayed_blocks_answer_for_the_real_ones():
    """A model that reads an attribute of its decoder layer in its forward (attention_type) still runs."""
    from zprune_cli.evaluation.blockwise import _Replay

    block = torch.nn.Linear(2, 2)
    block.attention_type = "sliding_attention"
    replay = _Replay(block, None, [0], as_tuple=False)
    assert replay.attention_type == "sliding_attention" and list(replay.parameters()) == []
    hidden = torch.ones(1, 3, 2)
    assert replay(hidden) is hidden and _Replay(block, None, [0], as_tuple=True)(hidden_states=hidden)[0] is hidden


def test_offloaded_eval_reads_each_block_once(depths, text_file, tmp_path, monkeypatch):
    """Block 0's inputs and every block's arguments are captured with one forward that reads block 0 alone
    (the others stand in), then the perplexity pass reads each block once and counts its zeros meanwhile."""
    from zprune_cli.models.offload import OffloadedBlocks

    reads: list[int] = []
    real = OffloadedBlocks.materialise
    monkeypatch.setattr(OffloadedBlocks, "materialise",
                        lambda self, i: (reads.append(i) if not self.is_materialised(i) else None, real(self, i))[1])
    metrics, _ = eval_ppl(depths[3], "disk", text_file, tmp_path)
    assert sorted(reads) == [0, 0, 1, 2] and metrics["sparsity"] == 0.0


@pytest.mark.parametrize("family", ["llama", "gpt_oss"])  # gpt_oss: masks of fused expert tensors
def test_offloaded_masks_equal_in_memory_block_by_block(family, depths, tmp_path, text_file):
    from conftest import save_tiny
    from transformers import AutoModelForCausalLM

    from zprune_cli.exports import export
    from zprune_cli.verbs.pruning import prune_with_masks

    base = depths[12] if family == "llama" else save_tiny(tmp_path / "base", family)
    calibration = Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    settings = Settings(cache_dir=tmp_path / "cache", device="cpu", dtype="float32")
    prune(str(base), PruneRecipe("wanda", 0.5), calibration=calibration, out=tmp_path / "pruned", settings=settings)
    export(tmp_path / "pruned", tmp_path / "masks", format="masks")
    outcomes = {}
    for offload in ("none", "disk"):
        TRACKER.reset()
        outcomes[offload] = prune_with_masks(str(base), tmp_path / "masks", out=tmp_path / f"again-{offload}",
                                             settings=Settings(cache_dir=tmp_path / "cache", device="cpu",
                                                               dtype="float32", offload=offload))
    peak = TRACKER.peak
    a, b = (outcomes[o].provenance for o in ("none", "disk"))
    assert a.pruned_layers == b.pruned_layers and a.overall_sparsity == b.overall_sparsity == 0.5
    assert outcomes["disk"].layers == outcomes["none"].layers
    ours, theirs = (AutoModelForCausalLM.from_pretrained(tmp_path / f"again-{o}").state_dict() for o in ("disk", "none"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    if family == "llama":
        assert 0 < peak <= block_bytes(base)  # one block read at a time


# --- --offload cpu: blocks in host memory, one copied to the device at a time ------------------------------

def test_host_offload_several_methods_perplexity_and_masks(depths, tmp_path, text_file):
    """The engine sees a model loaded whole: a dense snapshot serves several recipes, evaluation runs the
    model's own forward (each block copied over by its hooks), masks apply in host memory."""
    from transformers import AutoModelForCausalLM

    from zprune_cli.exports import export
    from zprune_cli.verbs.pruning import prune_with_masks

    calibration = Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    states = {}
    for offload in ("none", "cpu"):
        settings = Settings(cache_dir=tmp_path / "cache", device="cpu", dtype="float32", offload=offload)
        prune(str(depths[3]), [PruneRecipe("wanda", 0.5), PruneRecipe("sparsegpt", 0.5, propagate="pruned")],
              calibration=calibration, out=tmp_path / offload, settings=settings)
        states[offload] = {m: AutoModelForCausalLM.from_pretrained(tmp_path / offload / m).state_dict()
                           for m in ("wanda", "sparsegpt")}
    for method, state in states["none"].items():
        assert all(torch.equal(v, states["cpu"][method][k]) for k, v in state.items()), method
    whole, _ = eval_ppl(tmp_path / "none" / "wanda", "none", text_file, tmp_path / "m")
    host, peak = eval_ppl(tmp_path / "none" / "wanda", "cpu", text_file, tmp_path / "c")
    assert host["ppl:corpus.txt"] == whole["ppl:corpus.txt"] and host["sparsity"] == whole["sparsity"]
    assert 0 < peak <= block_bytes(depths[3])
    export(tmp_path / "none" / "wanda", tmp_path / "masks", format="masks")
    outcome = prune_with_masks(str(depths[3]), tmp_path / "masks", settings=Settings(
        cache_dir=tmp_path / "cache", device="cpu", dtype="float32", offload="cpu"))
    assert outcome.provenance.overall_sparsity == 0.5


def test_a_gpu_too_small_for_the_weights_keeps_the_blocks_on_the_host(depths, monkeypatch, caplog):
    import logging

    from zprune_cli.models import offload_host
    from zprune_cli.models.handle import ModelHandle
    from zprune_cli.models.offload import offloaded

    monkeypatch.setattr(offload_host, "_fits", lambda model, device: False)  # as mem_get_info would say
    monkeypatch.setattr(offload_host, "_free", lambda device: 2**20)
    handle = ModelHandle(str(depths[3]), "cpu", "float32")
    with caplog.at_level(logging.WARNING, logger="zprune"):
        model = handle.model
    assert handle.offload == "cpu" and isinstance(offloaded(model), offload_host.HostBlocks)
    assert any("do not fit the free memory" in r.getMessage() and "--offload cpu" in r.getMessage()
               for r in caplog.records)
