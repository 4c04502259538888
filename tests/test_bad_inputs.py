"""Bad input, damaged files, full disks and interruptions, through the CLI as a user meets them.

Every case asserts the exit code (2 bad usage, 1 failed run, 130/143 interrupted), exactly one line on
stderr that names the problem, no traceback, and (where something was being written) no leftovers.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import save_tiny
from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneError

runner = CliRunner()
CAL = ["-n", "2", "-l", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, text files good and bad, a pruned folder, and a cache holding one entry."""
    root = tmp_path_factory.mktemp("bad")
    w = {"root": root, "model": save_tiny(root / "model"), "text": root / "corpus.txt"}
    words = "pruning keeps the weights that matter and drops the rest of them quietly".split()
    w["text"].write_text(" ".join(words[i % len(words)] for i in range(4000)))
    files = {
        "empty.txt": "   \n", "notes.csv": "a,b\n", "short.txt": "only a few words",
        "null.jsonl": '{"text": "fine"}\n{"text": null}\n', "list.jsonl": '{"text": ["a", "b"]}\n',
        "broken.jsonl": '{"text": "a"\n', "nofield.jsonl": '{"body": "a"}\n', "bad.toml": "cache_dir = \n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
        w[name] = root / name
    (root / "binary.txt").write_bytes(b"\x00\x01\x02" * 50)
    w["binary.txt"] = root / "binary.txt"
    (root / "folder").mkdir()
    w["folder"] = root / "folder"
    w["no_config"] = root / "no_config"
    w["no_config"].mkdir()
    return w


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("warning:", "info:"))]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".zprune-tmp-" in p.name or p.name.startswith(".tmp-")]


# --- arguments: prune ------------------------------------------------------------------------------------
PRUNE_CASES = [
    (["-s", "1.5"], 2, "between 0 and 1"),
    (["-s", "-0.1"], 2, "between 0 and 1"),
    (["-s", "nan"], 2, "finite"),
    (["-p", "2:4", "-s", "0.7"], 2, "--pattern 2:4"),
    (["-p", "5:4"], 2, "invalid pattern"),
    (["-p", "half"], 2, "invalid pattern"),
    (["--scope", "diagonal"], 2, "--scope"),
    (["--allocation", "owl", "-p", "2:4"], 2, "--allocation owl"),
    (["--allocation", "greedy"], 2, "--allocation"),
    (["--allocation", "owl", "--owl-m", "0"], 2, "--owl-m must be positive"),
    (["--allocation", "owl", "--owl-lambda", "-1"], 2, "--owl-lambda"),
    (["--propagate", "sideways"], 2, "--propagate"),
    (["--ignore", "["], 2, "regular expression"),
    (["--ignore", "."], 2, "no Linear layer is left"),
    (["--option", "a"], 2, "KEY=VALUE"),
    (["-m", "ria", "--option", "z=1"], 2, "no option z"),
    (["-m", "ria", "--option", "a=inf"], 2, "option a"),
    (["-m", "alps", "--option", "rho=0"], 2, "alps option rho must be a finite number > 0, got "),
    (["-m", "alps", "--option", "max_iter=0"], 2, "alps option max_iter must be an integer >= 1, got "),
    (["-m", "sparsegpt", "--option", "blocksize=0"], 2, "sparsegpt option blocksize must be an integer >= 1"),
    (["--owl-m", "3"], 2, "--owl-m needs --allocation owl"),
    (["-m", "nosuch"], 2, "unknown method"),
    (["-m", ","], 2, "--method is empty"),
    (["-m", "wanda,wanda"], 2, "twice"),
    (["-n", "0"], 2, "--nsamples"),
    (["-l", "1"], 2, "--seqlen"),
    (["--seed", "-1"], 2, "--seed"),
    (["--seed", str(2**64)], 2, "--seed must be at most"),
    (["-l", "100000"], 2, "beyond the model's maximum"),
    (["--device", "cuda:7"], 2, "CUDA"),
    (["--device", "banana"], 2, "unknown device"),
    (["--dtype", "float8"], 2, "unknown dtype"),
    (["--wbits", "1"], 2, "--wbits must be 2..8 bits"),
    (["--wbits", "9"], 2, "--wbits must be 2..8 bits"),
    (["--wbits", "4", "--group-size", "24"], 2, "--group-size 24 does not divide the input width 32"),
    (["--wbits", "4", "--group-size", "-1"], 2, "--group-size must be a positive"),
    (["-m", "sparsegpt", "-p", "2:4", "--wbits", "4", "--act-order"], 2, "--act-order cannot take effect with sparsegpt"),
    (["-s", "0"], 2, "0 only with --wbits"),
]


@pytest.mark.parametrize("args, code, needle", PRUNE_CASES, ids=[" ".join(c[0]) for c in PRUNE_CASES])
def test_prune_arguments(world, tmp_path, args, code, needle):
    out = tmp_path / "out"
    result = invoke("prune", world["model"], "--data", world["text"], *CAL, "--out", out, *args)
    assert needle in one_line(result, code)
    assert not out.exists() and not leftovers(tmp_path)


DATA_CASES = [
    ("no-such-dir/file.txt", 2, "no such file: no-such-dir/file.txt"),
    ("nosuchfile.txt", 2, "no such file: nosuchfile.txt"),
    ("c5", 2, "unknown data 'c5': use one of wikitext2, c4, ptb"),
    ("folder", 2, "is not a file"),
    ("notes.csv", 2, "unknown type"),
    ("empty.txt", 2, "empty"),
    ("binary.txt", 2, "not text"),
    ("null.jsonl", 2, "null, not text"),
    ("list.jsonl", 2, "list, not text"),
    ("broken.jsonl", 2, "not JSON"),
    ("nofield.jsonl", 2, "no 'text' field"),
]


@pytest.mark.parametrize("data, code, needle", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_calibration_data(world, data, code, needle):
    source = world.get(data, data)
    assert needle in one_line(invoke("calibrate", world["model"], "--data", source, *CAL), code)


def test_text_too_short_for_the_windows(world):
    assert "too short" in one_line(invoke("calibrate", world["model"], "--data", world["short.txt"], "-n", 2, "-l", 256), 2)


MODEL_CASES = [
    ("./no-such-dir/model", 2, "no model at"),
    ("no_config", 1, "without config.json"),
    ("text", 1, "not a .gguf model"),
]


@pytest.mark.parametrize("model, code, needle", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_models(world, model, code, needle):
    assert needle in one_line(invoke("calibrate", world.get(model, model), "--data", world["text"], *CAL), code)


def test_truncated_model_weights(world, tmp_path):
    import shutil

    cut = tmp_path / "cut"  # a name no message would contain by chance
    shutil.copytree(world["model"], cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    line = one_line(invoke("calibrate", cut, "--data", world["text"], *CAL), 1)
    assert line.startswith("error: a safetensors file is damaged or truncated"), line


def test_non_finite_weight_stops_before_saving(world, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["model"])
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = math.nan
    model.save_pretrained(tmp_path / "nan")
    for file in world["model"].glob("tokenizer*"):
        (tmp_path / "nan" / file.name).write_bytes(file.read_bytes())
    for method in ("magnitude", "sparsegpt"):
        out = tmp_path / f"out-{method}"
        line = one_line(invoke("prune", tmp_path / "nan", "-m", method, "--data", world["text"], *CAL, "--out", out), 1)
        assert line.startswith("error: the weight of layer model.layers.1.mlp.up_proj holds 1 non-finite value(s)"), line
        assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("extra", [[], ["--offload", "disk"], ["--dry-run"], ["--offload", "disk", "--dry-run"]],
                         ids=["in-memory", "offloaded", "dry-run", "offloaded-dry-run"])
def test_a_model_with_no_decoder_blocks(world, tmp_path, cache, extra):
    """A causal LM with zero decoder layers: refused in one line naming what was found, whichever path reads it."""
    from transformers import AutoModelForCausalLM

    from conftest import byte_tokenizer, tiny_config

    config = tiny_config("llama")
    config.num_hidden_layers = 0
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "no-blocks")
    byte_tokenizer().save_pretrained(tmp_path / "no-blocks")
    line = one_line(invoke("calibrate", tmp_path / "no-blocks", "--data", world["text"], *CAL, *extra), 1)
    assert "found no decoder blocks in LlamaForCausalLM" in line and "model.layers (0 x )" in line
    stats = cache / "stats"  # the key's lock file may stay (zprune cache gc); no entry, no temporary folder
    assert not stats.exists() or not any(p.is_dir() for p in stats.iterdir())


# --- environment and configuration -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, code, needle",
    [
        ({"ZPRUNE_NSAMPLES": "many"}, 2, "ZPRUNE_NSAMPLES"),
        ({"ZPRUNE_SEQLEN": "1"}, 2, "--seqlen"),
        ({"ZPRUNE_LOCK_TIMEOUT": "x", "ZPRUNE_DB_TIMEOUT": "soon"}, 2, "ZPRUNE_DB_TIMEOUT"),
    ],
    ids=["nsamples", "seqlen", "db-timeout"],
)
def test_environment(world, env, code, needle):
    args = ["eval", world["model"], "--eval", world["text"], "--eval-seqlen", 32, "--max-windows", 1]
    assert needle in one_line(invoke(*args, env=env), code)


def test_a_missing_data_dir_in_the_environment_is_named_and_ignored(world):
    """An exported variable outlives its folder (and a fresh clone has none of the folders a README names):
    the run goes on, with one warning that names the variable."""
    args = ["eval", world["model"], "--eval", world["text"], "--eval-seqlen", 32, "--max-windows", 1]
    result = invoke(*args, env={"ZPRUNE_DATA_DIR": "no-such-dir/data"})
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "ZPRUNE_DATA_DIR" in line]
    assert len(warnings) == 1 and "ignoring" in warnings[0] and "no-such-dir/data" in warnings[0], result.stderr


def test_data_dir_flag_must_exist(world):
    assert "is not a folder" in one_line(invoke("calibrate", world["model"], "--data-dir", "no-such-dir", "--data", world["text"]), 2)


def test_bad_config_file(world, tmp_path, monkeypatch):
    (tmp_path / "zprune.toml").write_text("[calibration]\nnsamples = \"4\"\n")
    monkeypatch.chdir(tmp_path)
    line = one_line(invoke("calibrate", world["model"], "--data", world["text"]), 2)
    assert "zprune.toml" in line and "calibration.nsamples" in line


# --- eval --------------------------------------------------------------------------------------------------
EVAL_CASES = [
    (["--limit", "0", "--tasks", "arc_easy_local"], 2, "--limit"),
    (["--num-fewshot", "-1", "--tasks", "arc_easy_local"], 2, "--num-fewshot"),
    (["--batch-size", "0"], 2, "--batch-size"),
    (["--data", "none"], 2, "nothing to measure"),  # the old spelling, still accepted for a release
    (["--max-windows", "0"], 2, "--max-windows"),
    (["--eval-seqlen", "1"], 2, "--eval-seqlen"),
    (["--eval", "none"], 2, "nothing to measure"),
    (["--eval", "none", "--tasks", "arc_easy_locall"], 2, "arc_easy_local"),
    (["--baseline"], 2, "--baseline needs a zprune output"),
    (["--eval", "wikitext2", "--eval-seqlen", "32"], 1, "--data-dir"),
]


@pytest.mark.parametrize("args, code, needle", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_eval_arguments(world, monkeypatch, args, code, needle):
    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    base = [] if "--eval" in args else ["--eval", world["text"], "--eval-seqlen", "32"]
    assert needle in one_line(invoke("eval", world["model"], *base, *args), code)


@pytest.fixture(scope="module")
def pruned(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "p"
    home = {"ZPRUNE_HOME": str(out.parent / "cache")}  # module scope: before the per-test ZPRUNE_HOME is set
    result = invoke("prune", world["model"], "-m", "wanda", "--data", world["text"], *CAL, "--out", out, env=home)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    "content, needle",
    [('{"schema": 2, "overall_sparsity": NaN}', "NaN"), ("[1, 2]", "expected a JSON object"),
     ('{"schema": 7}', "schema 7"), ("{not json", "cannot read"), ('{"schema": 2, "recipe": {"method": "x"}}', "not a valid"),
     ({"relative": ["..", "x"]}, "'base_model.relative' must be a string, not list"),
     ({"content": 7}, "'base_model.content' must be a string, not int"), ({"location": None}, "'base_model.location'")],
    ids=["nan", "list", "schema", "syntax", "recipe", "relative", "content", "location"],
)
def test_damaged_zprune_json(pruned, tmp_path, content, needle):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pruned, copy)
    if isinstance(content, dict):  # one field of the base model's record damaged
        data = json.loads((copy / "zprune.json").read_text())
        content = json.dumps({**data, "base_model": {**data["base_model"], **content}})
    (copy / "zprune.json").write_text(content)
    assert needle in one_line(invoke("eval", copy, "--eval", "none", "--speed"), 1)
    assert needle in one_line(invoke("export", copy, "--to", tmp_path / "e"), 1)


@pytest.mark.parametrize("change, needle", [({"method": "wanda-renamed"}, "cannot be rebuilt by this zprune: unknown method"),
                                             ({"sparsity": 0.25}, "does not match its recipe")], ids=["renamed-method", "digest"])
def test_a_recipe_this_zprune_cannot_rebuild(world, pruned, tmp_path, change, needle, monkeypatch):
    """zprune.json is read without the method registry (a folder of a renamed method stays readable); what needs
    the recipe itself (eval's rows, export's checks) says in one line that it cannot be rebuilt, exit 1, before
    anything is measured or written."""
    import shutil

    from zprune_cli.records.provenance import Provenance

    copy = tmp_path / "copy"
    shutil.copytree(pruned, copy)
    data = json.loads((copy / "zprune.json").read_text())
    (copy / "zprune.json").write_text(json.dumps({**data, "recipe": {**data["recipe"], **change}}))
    assert Provenance.read(copy).recipe.fields == {**data["recipe"], **change}  # read as stored
    measured = []
    monkeypatch.setattr("zprune_cli.evaluation.run._perplexity", lambda *a, **k: measured.append(a))
    assert needle in one_line(invoke("eval", copy, "--eval", world["text"], "--eval-seqlen", "32"), 1)
    assert measured == []  # said before any window was run
    assert needle in one_line(invoke("export", copy, "--to", tmp_path / "e"), 1)
    assert not (tmp_path / "e").exists()


# --- compare ----------------------------------------------------------------------------------------------
COMPARE_CASES = [
    (["--eval", ""], 2, "nothing to measure"),
    (["--method", ""], 2, "grid is empty"),
    (["--sparsity", "0.5,abc"], 2, "takes numbers"),
    (["--pattern", "9:4"], 2, "invalid pattern"),
    (["--format", "xml"], 2, "--format"),
    (["--grid", "nosuch"], 2, "no grid named"),
    (["--allocation", "owl", "--pattern", "2:4"], 2, "--allocation owl"),
    (["--method", "wanda", "--option", "a=1"], 2, "no option a"),
]


@pytest.mark.parametrize("args, code, needle", COMPARE_CASES, ids=[" ".join(c[0]) for c in COMPARE_CASES])
def test_compare_arguments(world, args, code, needle):
    result = invoke("compare", world["model"], "--data", world["text"], *CAL, "--eval", world["text"],
                    "--eval-seqlen", 32, "--max-windows", 1, *args)
    assert needle in one_line(result, code)


def test_compare_show_unknown_metric():
    assert "unknown metric" in one_line(invoke("compare", "--show", "--metric", "bleu"), 2)


# --- export -----------------------------------------------------------------------------------------------
def test_export_arguments(world, pruned, tmp_path):
    assert "not a folder" in one_line(invoke("export", tmp_path / "nothing", "--to", tmp_path / "e"), 1)
    assert "overlaps the source" in one_line(invoke("export", pruned, "--to", pruned / "inside"), 2)
    assert "invalid shard size" in one_line(invoke("export", pruned, "--to", tmp_path / "e", "--max-shard-size", "5XB"), 2)
    assert "not a zprune output" in one_line(invoke("export", world["model"], "--to", tmp_path / "e"), 1)
    result = invoke("export", pruned, "--to", tmp_path / "e", "--format", "nope")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_export_of_truncated_weights(pruned, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pruned, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    line = one_line(invoke("export", copy, "--to", tmp_path / "e", "--format", "sparse"), 1)
    assert "model.safetensors" in line and not (tmp_path / "e").exists() and not leftovers(tmp_path)


def test_out_path_with_markup_characters(world, tmp_path):
    result = invoke("prune", world["model"], "-m", "magnitude", "--data", world["text"], *CAL, "--out", tmp_path / "p[/x]")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p[/x]" / "zprune.json").is_file()


def test_out_file_overwritten_leaves_nothing_hidden(world, tmp_path):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    target = tmp_path / "target"
    target.write_text("an old file")
    assert "already exists" in one_line(invoke("prune", world["model"], "-m", "magnitude", "--data", world["text"], *CAL,
                                               "--out", target), 2)
    result = invoke("prune", world["model"], "-m", "magnitude", "--data", world["text"], *CAL, "--out", target, "--overwrite")
    assert result.exit_code == 0 and target.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


# --- the statistics store ---------------------------------------------------------------------------------
@pytest.fixture
def entry(world, cache):
    result = invoke("calibrate", world["model"], "--data", world["text"], *CAL, "--json")
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["path"])


def test_cache_keys(entry):
    assert "not a statistics key" in one_line(invoke("cache", "rm", ""), 2)
    assert "too short" in one_line(invoke("cache", "rm", entry.name[:3]), 2)
    assert "no statistics entry" in one_line(invoke("cache", "rm", "ffffffffff"), 2)
    assert "not a statistics key" in one_line(invoke("cache", "info", "../x"), 2)
    assert entry.is_dir()


def test_dense_key_removable_beside_a_propagated_entry(world, entry, tmp_path):
    assert invoke("prune", world["model"], "-m", "wanda", "--propagate", "pruned", "--data", world["text"], *CAL).exit_code == 0
    siblings = [p.name for p in entry.parent.iterdir() if p.name.startswith(entry.name + "-p")]
    assert siblings
    assert invoke("cache", "info", entry.name).exit_code == 0
    assert invoke("cache", "rm", entry.name).exit_code == 0 and not entry.exists()


def test_symlinked_entry_is_unlinked(entry, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.move(str(entry), moved)
    entry.symlink_to(moved, target_is_directory=True)
    assert invoke("cache", "rm", entry.name).exit_code == 0
    assert not entry.is_symlink() and moved.is_dir()  # the link went, what it pointed at stays


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda e: (e / "manifest.json").write_text("[1, 2, 3]"), "another zprune version"),
        (lambda e: (e / "manifest.json").write_text("{"), "no readable manifest"),
        (lambda e: _edit_manifest(e, lambda m: m.update(created=5)), "no settings or creation time"),
        (lambda e: _edit_manifest(e, lambda m: m["files"].update({"../../x": {"size": 1, "sha256": "0"}})), "outside the entry"),
        (lambda e: _edit_manifest(e, lambda m: m["blocks"][0].update(file="block_009.safetensors")), "block 0"),
        (lambda e: _zero(e / "block_001.safetensors"), "checksum"),
        (lambda e: (e / "block_000.safetensors").write_bytes(b"x"), "truncated"),
        (lambda e: (e / "inputs.safetensors").unlink(), "missing"),
    ],
    ids=["list", "syntax", "types", "escape", "block", "zeroed", "truncated", "missing"],
)
def test_damaged_entries_are_reported_removed_and_recomputed(world, entry, damage, needle):
    damage(entry)
    rows = json.loads(invoke("cache", "ls", "--json").stdout)
    assert [r["problem"] for r in rows if r["key"] == entry.name][0] and needle in rows[0]["problem"]
    assert needle in invoke("cache", "verify", entry.name).stdout
    assert invoke("cache", "verify").exit_code == 1
    result = invoke("calibrate", world["model"], "--data", world["text"], *CAL, "--json")  # recomputed, said once
    assert result.exit_code == 0 and "computing it again" in result.stderr and not json.loads(result.stdout)["hit"]
    assert invoke("cache", "verify", entry.name).exit_code == 0
    damage(entry)
    gc = json.loads(invoke("cache", "gc", "--json").stdout)
    assert entry.name in [r["name"] for r in gc["removed"]] and not entry.exists()


def _edit_manifest(entry: Path, change) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    change(manifest)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def _zero(file: Path) -> None:
    stat = file.stat()
    file.write_bytes(b"\0" * stat.st_size)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))


def test_lock_held_by_another_process_times_out(world, entry, monkeypatch):
    import fcntl
    import subprocess
    import sys

    key = entry.name
    invoke("cache", "rm", key)
    lock = entry.parent / f"{key}.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, json, os, sys, time\n"
        f"h = open({str(lock)!r}, 'a+'); fcntl.flock(h, fcntl.LOCK_EX)\n"
        "h.write(json.dumps({'pid': os.getpid(), 'command': 'zprune calibrate', 'since': 'now'})); h.flush()\n"
        "print('held', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line(invoke("calibrate", world["model"], "--data", world["text"], *CAL, env={"ZPRUNE_LOCK_TIMEOUT": "0.5"}), 1)
        assert f"process {holder.pid}" in line and "ZPRUNE_LOCK_TIMEOUT" in line
    finally:
        holder.kill()
        holder.wait()
    assert fcntl is not None and invoke("calibrate", world["model"], "--data", world["text"], *CAL).exit_code == 0


def test_gc_removes_orphan_locks_and_dead_writers(entry):
    root = entry.parent
    (root / "0123456789abcdef0123.lock").write_text("")
    dead = root / f".tmp-0123456789abcdef0123-{2**22 + 12345}"
    dead.mkdir()
    (dead / "block_000.safetensors").write_bytes(b"partial")
    gc = json.loads(invoke("cache", "gc", "--json").stdout)
    names = {r["name"] for r in gc["removed"]}
    assert {"0123456789abcdef0123.lock", dead.name} <= names and entry.name not in names
    assert entry.is_dir()


# --- disks, databases, interruptions ----------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")


def test_disk_full_while_storing_statistics(world, cache, monkeypatch):
    import safetensors.torch  # the statistics store binds it lazily (base/lazy.py): patched where it lives

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    assert "disk is full" in one_line(invoke("calibrate", world["model"], "--data", world["text"], *CAL), 1)
    assert not leftovers(cache)


@pytest.mark.parametrize("message", [
    "Error while serializing: I/O error: No space left on device (os error 28)",  # safetensors 0.8 (a full tmpfs)
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'])  # older releases
def test_full_disk_under_safetensors_reads_as_a_full_disk(message, tmp_path):
    """safetensors' writer reports ENOSPC as a SafetensorError (seen on a full tmpfs), not as an OSError."""
    from safetensors import SafetensorError

    from zprune_cli.base.errors import translate
    from zprune_cli.base.staging import staged_folder

    assert str(translate(SafetensorError(message))).startswith("the disk is full; free space")
    assert "damaged or truncated" in str(translate(SafetensorError("Error while deserializing header: HeaderTooLarge")))
    with pytest.raises(ZpruneError, match=r"writing .*out failed: the disk is full"), staged_folder(tmp_path / "out", False):
        raise SafetensorError(message)
    assert not leftovers(tmp_path) and not (tmp_path / "out").exists()


def test_disk_full_while_saving(world, cache, tmp_path, monkeypatch):
    import zprune_cli.verbs.pruning as pruning

    monkeypatch.setattr(pruning, "save_model", _disk_full)
    out = tmp_path / "out"
    assert "disk is full" in one_line(invoke("prune", world["model"], "-m", "wanda", "--data", world["text"], *CAL, "--out", out), 1)
    assert not out.exists() and not leftovers(tmp_path)


def test_disk_full_while_exporting(pruned, tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    assert "disk is full" in one_line(invoke("export", pruned, "--to", tmp_path / "e"), 1)
    assert not (tmp_path / "e").exists() and not leftovers(tmp_path)


def test_damaged_results_database(world, cache):
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "results.sqlite").write_bytes(b"this is not a database" * 100)
    line = one_line(invoke("eval", world["model"], "--eval", world["text"], "--eval-seqlen", 32, "--max-windows", 1), 1)
    assert "results.sqlite" in line and "move it aside" in line


def test_results_kept_when_the_database_stays_locked(world, cache):
    from zprune_cli.records.results import ResultsStore, results_path

    ResultsStore(results_path(cache)).close()
    hold = threading.Event()
    release = threading.Event()

    def lock_after_open():  # take the write lock once eval has opened the store and is measuring
        blocker = sqlite3.connect(results_path(cache), isolation_level=None)
        hold.wait(10)
        blocker.execute("BEGIN EXCLUSIVE")
        release.wait(30)
        blocker.execute("ROLLBACK")
        blocker.close()

    import zprune_cli.evaluation.run as run

    real_measure = run.measure

    def measure_then_lock(*args, **kwargs):
        metrics = real_measure(*args, **kwargs)
        hold.set()
        import time

        time.sleep(0.3)
        return metrics

    thread = threading.Thread(target=lock_after_open)
    thread.start()
    try:
        pytest.MonkeyPatch.setattr(pytest.MonkeyPatch(), run, "measure", measure_then_lock)
        result = invoke("eval", world["model"], "--eval", world["text"], "--eval-seqlen", 32, "--max-windows", 1, "--json",
                        env={"ZPRUNE_DB_TIMEOUT": "0.5"})
    finally:
        run.measure = real_measure
        release.set()
        thread.join()
    assert result.exit_code == 0, result.output
    assert "kept in" in result.stderr
    pending = list((cache / "results-pending").glob("*.json"))
    assert len(pending) == 1
    rows = ResultsStore(results_path(cache)).query(metric="ppl:*")  # opening records what was kept
    assert len(rows) == 1 and not list((cache / "results-pending").glob("*.json"))


def test_unwritable_cache_dir(world, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line(invoke("calibrate", world["model"], "--data", world["text"], *CAL, "--cache-dir", blocker / "cache"), 1)
    assert "cache" in line


def test_ctrl_c_during_pruning(world, tmp_path, monkeypatch):
    import zprune_cli.verbs.pruning as pruning

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pruning, "save_model", interrupted)
    out = tmp_path / "out"
    result = invoke("prune", world["model"], "-m", "wanda", "--data", world["text"], *CAL, "--out", out)
    assert "interrupted" in one_line(result, 130)
    assert not out.exists() and not leftovers(tmp_path)


def test_sigterm_during_pruning(world, tmp_path, monkeypatch):
    import zprune_cli.verbs.pruning as pruning
    from zprune_cli.cli import Terminated

    def terminated(*args, **kwargs):
        raise Terminated()

    monkeypatch.setattr(pruning, "save_model", terminated)
    out = tmp_path / "out"
    result = invoke("prune", world["model"], "-m", "wanda", "--data", world["text"], *CAL, "--out", out)
    assert "terminated" in one_line(result, 143)
    assert not out.exists() and not leftovers(tmp_path)


def test_unexpected_errors_are_one_line_naming_the_debug_switch(world, monkeypatch):
    import zprune_cli.verbs.calibration as calibration

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected\nwith a second line")

    monkeypatch.setattr(calibration, "_compute", broken)
    line = one_line(invoke("calibrate", world["model"], "--data", world["text"], *CAL), 1)
    assert "RuntimeError: something nobody expected" in line and "ZPRUNE_DEBUG=1" in line
