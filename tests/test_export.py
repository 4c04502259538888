"""zprune export: every format round-trips a tiny pruned Llama bit for bit; sizes; bad input via the CLI."""

from __future__ import annotations

import json
import re
import math
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.exports import FORMATS, apply_masks, export, load_pretrained, load_tokenizer
from zprune_cli.exports.io import parse_size

FINGERPRINT = "0123456789abcdef"
INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 127, 2, 0, 64]])


# --- fixture: a tiny Llama, dense and pruned, saved as `zprune prune --out DIR` would -----------------


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def prune_(model: torch.nn.Module, pattern: str) -> dict[str, float]:
    """Zero half of every Linear weight in the decoder blocks, lowest |w| first; return measured sparsity."""
    layers: dict[str, float] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not (isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")):
                continue
            w = module.weight  # [out, in]
            if pattern == "2:4":
                groups = w.view(w.shape[0], -1, 4)  # [out, in/4, 4]
                groups.scatter_(-1, groups.abs().argsort(dim=-1)[..., :2], 0)
            else:
                w.scatter_(1, w.abs().argsort(dim=1)[:, : w.shape[1] // 2], 0)
            layers[name] = float((w == 0).float().mean())
    return layers


def write_provenance(folder: Path, base: Path, layers: dict[str, float], pattern: str) -> None:
    """What `zprune prune` writes, through the one writer (schema 2)."""
    from zprune_cli.records.provenance import BaseModel, CalibrationRecord, Provenance
    from zprune_cli.engine.recipe import PruneRecipe

    Provenance(
        base_model=BaseModel("tiny-llama", str(base), FINGERPRINT), recipe=PruneRecipe("wanda", pattern=pattern).record(),
        pruned_layers=layers, overall_sparsity=sum(layers.values()) / len(layers), stats_key="ab" * 10,
        calibration=CalibrationRecord("c4", 8, 256, 0, "float32"), seconds=1.5,
        results={"ppl:wikitext2": {"value": 41.5, "protocol": {"dataset": "wikitext2"}}},
    ).write(folder)


def write_provenance_v1(folder: Path, base: Path, layers: dict[str, float], pattern: str) -> None:
    """What zprune 0.1 wrote (format 1, flat keys): still read."""
    overall = sum(layers.values()) / len(layers)
    (folder / "zprune.json").write_text(json.dumps({
        "format": 1, "zprune_version": "0.1.0",
        "base_model": {"spec": "tiny-llama", "location": str(base), "gguf_file": None, "revision": None,
                       "fingerprint": FINGERPRINT},
        "method": "wanda", "sparsity": 0.5, "pattern": pattern, "scope": "row", "allocation": "uniform",
        "propagate": "dense", "reconstruct": False, "stats_key": "ab" * 10,
        "calibration": {"data": "c4", "nsamples": 8, "seqlen": 256, "seed": 0},
        "pruned_layers": layers, "overall_sparsity": overall, "created": "2025-01-01T00:00:00+00:00",
        "seconds": 1.5, "results": {"perplexity": {"wikitext2": 41.5}},
    }))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zprune-export")
    out = {"base": root / "base"}
    tiny_model().save_pretrained(out["base"])
    for pattern, key in (("unstructured", "pruned"), ("2:4", "pruned24")):
        model = tiny_model()
        layers = prune_(model, pattern)
        model.save_pretrained(root / key)
        write_provenance(root / key, out["base"], layers, pattern)
        out[key] = root / key
    # A dense model that still calls itself pruned: what sparse-24-bitmask must refuse.
    dense = tiny_model()
    dense.save_pretrained(root / "dense")
    names = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")]
    write_provenance(root / "dense", out["base"], {n: 0.0 for n in names}, "unstructured")
    out["dense"] = root / "dense"
    return out


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


def assert_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name
    with torch.no_grad():
        assert torch.equal(a(INPUT_IDS).logits, b(INPUT_IDS).logits)


def plain_load(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder).eval()


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, source", [("hf", "pruned"), ("hf", "pruned24"), ("sparse", "pruned"),
                                         ("sparse", "pruned24"), ("sparse-24-bitmask", "pruned24")])
def test_round_trip_bit_identical(folders, tmp_path, fmt, source):
    reference = plain_load(folders[source])
    result = export(folders[source], tmp_path / "out", fmt)
    assert result.destination == str(tmp_path / "out") and result.pruned_layers == 14
    model = load_pretrained(tmp_path / "out")
    assert load_tokenizer(tmp_path / "out") is None  # the fixture has no tokenizer files
    assert_identical(reference, model)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    # provenance travels: zprune.json, every shard's metadata, the model card
    provenance = json.loads((tmp_path / "out" / "zprune.json").read_text())
    assert provenance["export"]["format"] == fmt and provenance["stats_key"] == "ab" * 10
    for file in result.files:
        with safe_open(str(tmp_path / "out" / file), framework="pt") as f:
            assert json.loads(f.metadata()["zprune"])["pruned_layers"] == provenance["pruned_layers"]
    card = (tmp_path / "out" / "README.md").read_text()
    scope = "row" if source == "pruned" else "none"  # N:M has no scope
    for text in ("wanda", f"| scope | {scope} |", "uniform", "`c4`", "ab" * 10, "model.layers.1.mlp.down_proj", "41.5",
                 "50.00%", "transformers"):
        assert text in card


def test_format_1_provenance_is_still_read(folders, tmp_path):
    import shutil

    from zprune_cli.engine.recipe import recipe_of
    from zprune_cli.records.provenance import Provenance

    shutil.copytree(folders["pruned"], tmp_path / "old")
    write_provenance_v1(tmp_path / "old", folders["base"], Provenance.read(folders["pruned"]).pruned_layers, "unstructured")
    old = Provenance.read(tmp_path / "old")
    new = Provenance.read(folders["pruned"])
    assert recipe_of(old.recipe) == recipe_of(new.recipe)  # the same recipe, lifted from flat keys
    # it stored no digest: its results are keyed apart from today's recipe, whose weights may differ
    assert old.recipe.digest is None and old.cell_digest.startswith("v1-") and new.cell_digest == recipe_of(new.recipe).digest
    export(tmp_path / "old", tmp_path / "out", "hf")
    assert json.loads((tmp_path / "out" / "zprune.json").read_text())["schema"] == 2


def test_hf_loads_with_plain_transformers_and_shards(folders, tmp_path):
    result = export(folders["pruned"], tmp_path / "hf", "hf", max_shard_size="100KB")
    out = tmp_path / "hf"
    assert len(result.files) > 1 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(result.files)
    for file in result.files:
        assert (out / file).stat().st_size <= 100_000 + 10_000  # one tensor may overshoot a little
    config = json.loads((out / "config.json").read_text())
    assert not {"quantization_config", "sparsity_config", "compression_config"} & set(config)
    assert_identical(plain_load(folders["pruned"]), plain_load(out))
    assert result.stored_bytes == result.dense_bytes


def test_sparse24_layout_matches_compressed_tensors(folders, tmp_path):
    result = export(folders["pruned24"], tmp_path / "s24", "sparse-24-bitmask")
    assert any("vLLM" in w for w in result.warnings)
    config = json.loads((tmp_path / "s24" / "config.json").read_text())
    sparsity = config["quantization_config"]["sparsity_config"]
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert sparsity["format"] == "sparse-24-bitmask" and sparsity["sparsity_structure"] == "2:4"
    weight = state(plain_load(folders["pruned24"]))["model.layers.0.mlp.up_proj.weight"]  # [128, 64]
    with safe_open(str(tmp_path / "s24" / "model.safetensors"), framework="pt") as f:
        assert "model.layers.0.mlp.up_proj.weight" not in f.keys()
        shape = f.get_tensor("model.layers.0.mlp.up_proj.shape")
        compressed = f.get_tensor("model.layers.0.mlp.up_proj.compressed")
        bitmask = f.get_tensor("model.layers.0.mlp.up_proj.bitmask")
    assert shape.tolist() == [[128], [64]] and shape.dtype == torch.int64
    assert compressed.shape == (128, 32) and compressed.dtype == weight.dtype
    assert bitmask.shape == (128, 8) and bitmask.dtype == torch.uint8
    keep = np.unpackbits(bitmask.numpy(), axis=-1, count=64, bitorder="little").astype(bool)
    assert torch.equal(torch.from_numpy(keep), weight != 0)
    assert torch.equal(compressed.flatten(), weight[weight != 0])


# --- sparse: layout and sizes ---------------------------------------------------------------------


def test_sparse_layout_and_sizes(folders, tmp_path):
    result = export(folders["pruned"], tmp_path / "sp", "sparse")
    out = tmp_path / "sp"
    manifest = json.loads((out / "zprune-sparse.json").read_text())
    assert manifest["format"] == "zprune-sparse" and manifest["version"] == 1 and manifest["bit_order"] == "little"
    assert not (out / "model.safetensors").exists()  # plain transformers must refuse, not random-init

    pruned = state(plain_load(folders["pruned"]))
    names = [f"{m}.weight" for m in json.loads((folders["pruned"] / "zprune.json").read_text())["pruned_layers"]]
    assert sorted(manifest["compressed"]) == sorted(names)
    stored = theory = dense = 0
    for name in names:
        w = pruned[name]
        with safe_open(str(out / manifest["weight_map"][f"{name}.values"]), framework="pt") as f:
            values, bitmask, shape = (f.get_tensor(f"{name}.{s}") for s in ("values", "bitmask", "shape"))
        assert values.dim() == 1 and values.dtype == w.dtype
        assert bitmask.dtype == torch.uint8 and bitmask.numel() == math.ceil(w.numel() / 8)
        assert shape.dtype == torch.int64 and shape.tolist() == list(w.shape)
        mask = np.unpackbits(bitmask.numpy(), count=w.numel(), bitorder="little").astype(bool).reshape(w.shape)
        assert torch.equal(torch.from_numpy(mask), w != 0)
        assert torch.equal(values, w[w != 0])  # row-major
        stored += sum(t.numel() * t.element_size() for t in (values, bitmask, shape))
        theory += int((w != 0).sum()) * w.element_size() + w.numel() / 8
        dense += w.numel() * w.element_size()
    assert abs(stored - theory) / theory < 0.05
    assert stored / dense == pytest.approx(0.5 + 1 / 32, abs=0.01)  # fp32 at 50%: 53% of dense
    assert result.pruned_stored_bytes == stored
    assert result.pruned_theoretical_bytes == pytest.approx(theory, rel=1e-6)
    weight_files = lambda d, pattern: sum(p.stat().st_size for p in d.glob(pattern))  # noqa: E731
    assert weight_files(out, "*.safetensors") < weight_files(folders["pruned"], "*.safetensors")
    assert result.stored_bytes < result.dense_bytes


def test_sparse_keeps_negative_zero_bits(tmp_path, folders):
    # -0.0 is a stored value, not a pruned entry: the round trip is bit for bit, not just ==.
    model = plain_load(folders["pruned"])
    with torch.no_grad():
        w = model.model.layers[0].self_attn.q_proj.weight
        w[0, w[0] == 0] = -0.0
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "zprune.json").write_text((folders["pruned"] / "zprune.json").read_text())
    export(tmp_path / "src", tmp_path / "sp", "sparse")
    loaded = load_pretrained(tmp_path / "sp")
    got = loaded.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(got.view(torch.int32), w.view(torch.int32))


# --- masks ----------------------------------------------------------------------------------------


def test_masks_reproduce_the_pruned_model_from_the_base(folders, tmp_path):
    result = export(folders["pruned"], tmp_path / "m", "masks")
    assert result.files == ["masks.safetensors"]
    meta = json.loads((tmp_path / "m" / "masks.json").read_text())
    assert meta["base_model"]["fingerprint"] == FINGERPRINT and len(meta["modules"]) == 14
    assert result.pruned_stored_bytes < result.pruned_dense_bytes / 30  # 1 bit per 32-bit weight
    base = plain_load(folders["base"])
    assert apply_masks(base, tmp_path / "m", fingerprint=FINGERPRINT) == 14
    assert_identical(plain_load(folders["pruned"]), base)
    base24 = plain_load(folders["base"])
    export(folders["pruned24"], tmp_path / "m24", "masks")
    assert apply_masks(base24, tmp_path / "m24" / "masks.safetensors") == 14
    assert_identical(plain_load(folders["pruned24"]), base24)


def test_apply_masks_refuses_another_model(folders, tmp_path):
    export(folders["pruned"], tmp_path / "m", "masks")
    base = plain_load(folders["base"])
    with pytest.raises(ZpruneError, match="fingerprint 0123456789abcdef"):
        apply_masks(base, tmp_path / "m", fingerprint="ffffffffffffffff")
    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ZpruneError, match=r"mask for model\.layers\.0\.self_attn\.q_proj has shape \[64, 64\]"):
        apply_masks(other, tmp_path / "m")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # untouched


def test_load_pretrained_refuses_a_masks_folder(folders, tmp_path):
    export(folders["pruned"], tmp_path / "m", "masks")
    with pytest.raises(ZpruneError, match="holds no weights"):
        load_pretrained(tmp_path / "m")


# --- atomic writes --------------------------------------------------------------------------------


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".zprune-tmp-" in p.name]


def test_interrupt_leaves_nothing(folders, tmp_path, monkeypatch):
    from zprune_cli.exports import sparse

    calls = []

    def interrupted(name, weight):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(name, weight)

    original = sparse.compress
    monkeypatch.setattr(sparse, "compress", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(folders["pruned"], tmp_path / "out", "sparse", max_shard_size="10KB")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_overwrite_replaces_the_destination(folders, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    with pytest.raises(ZpruneUsageError, match="--overwrite"):
        export(folders["pruned"], dest, "hf")
    assert (dest / "stale.txt").exists()
    export(folders["pruned"], dest, "hf", overwrite=True)
    assert not (dest / "stale.txt").exists() and (dest / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500mb") == 500 * 10**6
    assert parse_size("1000") == 1000
    for bad in ("5XB", "", "-1GB", "0"):
        with pytest.raises(ZpruneUsageError):
            parse_size(bad)


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch) -> CliRunner:
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("ZPRUNE_NO_PROGRESS", "1")
    monkeypatch.delenv("ZPRUNE_DEBUG", raising=False)
    return CliRunner()


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_prints_sizes(folders, tmp_path, runner):
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / "o"), "--format", "sparse", "-q"])
    assert result.exit_code == 0, result.output
    for text in ("dense", "stored", "theoretical", "53%"):
        assert text in result.output
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / "j"), "-f", "masks", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "masks" and data["pruned_layers"] == 14
    assert {"dense_bytes", "stored_bytes", "theoretical_bytes", "disk_bytes"} <= set(data)


@pytest.mark.parametrize("fmt, line", [
    ("hf", r"hf export: 1 file\(s\), 14 pruned layers, [\d.]+ KiB of tensors \(dense, as transformers loads them\)"),
    ("masks", r"masks export: 1 file\(s\), 14 pruned layers, [\d.]+ KiB of masks \(1 bit per weight\)"),
])
def test_cli_prints_only_the_sizes_that_apply(folders, tmp_path, runner, fmt, line):
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / fmt), "-f", fmt, "-q"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and re.fullmatch(line, lines[0]) and lines[1].startswith(f"wrote {tmp_path / fmt} ("), lines
    data = json.loads(runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / "j"), "-f", fmt,
                                          "--json", "--overwrite"]).stdout)
    size = data["pruned_stored_bytes"] if fmt == "masks" else data["stored_bytes"]
    assert f"{size / 1024:.1f} KiB" in lines[0]


def test_cli_not_a_zprune_folder(folders, tmp_path, runner):
    result = runner.invoke(app, ["export", str(folders["base"]), "--to", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert one_error_line(result).endswith("is not a zprune output folder (no zprune.json)")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_cli_sparse24_refuses_a_dense_model(folders, tmp_path, runner):
    result = runner.invoke(app, ["export", str(folders["dense"]), "--to", str(tmp_path / "o"), "-f", "sparse-24-bitmask"])
    assert result.exit_code == 1
    assert "layer model.layers.0.self_attn.q_proj is not 2:4 sparse" in one_error_line(result)
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_cli_sparse24_refuses_unstructured(folders, tmp_path, runner):
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / "o"), "-f", "sparse-24-bitmask"])
    assert result.exit_code == 1
    assert "model.layers.0.self_attn.q_proj" in one_error_line(result)
    assert not (tmp_path / "o").exists()


def test_cli_existing_destination(folders, tmp_path, runner):
    (tmp_path / "o").mkdir()
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "exists; pass --overwrite" in one_error_line(result)
    assert list((tmp_path / "o").iterdir()) == [] and leftovers(tmp_path) == []


def test_cli_destination_inside_source(folders, runner):
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(folders["pruned"] / "sub")])
    assert result.exit_code == 2
    assert "overlaps the source" in one_error_line(result)


def test_cli_bad_shard_size(folders, tmp_path, runner):
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(tmp_path / "o"), "--max-shard-size", "5XB"])
    assert result.exit_code == 2
    assert "invalid shard size" in one_error_line(result)


def test_cli_read_only_destination(folders, tmp_path, runner):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: a 0o555 folder is still writable")
        result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(parent / "o")])
        assert result.exit_code == 1
        assert "cannot write to" in one_error_line(result)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_cli_unwritable_destination_simulated(folders, tmp_path, runner, monkeypatch):
    # The same path as above, for runs as root (where chmod does not stop writes).
    parent = tmp_path / "ro"
    parent.mkdir()
    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.parent == parent:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    result = runner.invoke(app, ["export", str(folders["pruned"]), "--to", str(parent / "o")])
    assert result.exit_code == 1
    assert one_error_line(result) == f"error: cannot write to {parent}: Permission denied"
    assert list(parent.iterdir()) == []


def test_formats_listed_in_help(runner):
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    for fmt in FORMATS:
        assert fmt in result.output


def test_an_export_exports_again_with_its_tokenizer(folders, tmp_path):
    # Sharded hf -> sparse -> hf: the reader follows indexes and decompresses; side files follow along.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "pruned": 1, "weights": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    export(folders["pruned"], tmp_path / "hf", "hf", max_shard_size="100KB")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "hf")
    export(tmp_path / "hf", tmp_path / "sparse", "sparse")
    export(tmp_path / "sparse", tmp_path / "again", "hf")
    model, tokenizer = load_pretrained(tmp_path / "again"), load_tokenizer(tmp_path / "again")
    assert_identical(plain_load(folders["pruned"]), model)
    assert tokenizer("pruned weights")["input_ids"] == [1, 2]
    assert json.loads((tmp_path / "again" / "zprune.json").read_text())["export"]["source"] == str(tmp_path / "sparse")
