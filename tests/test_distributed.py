"""torchrun: two CPU processes (gloo) give the single-process store entry and the same pruned weights; a bad
split fails with one line before any process group forms; one process never touches torch.distributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import REPO
from zprune_cli.base import distributed
from zprune_cli.cli.app import app
from zprune_cli.stats.collect import _layout

CALIBRATION = ["-n", "5", "-l", "32"]  # 5 windows over 2 ranks: uneven shards (3 + 2)


def torchrun(nproc: int, args: list, cache: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m zprune_cli ARGS` on the CPU, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZPRUNE_HOME": str(cache), "ZPRUNE_NO_PROGRESS": "1",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "zprune_cli", *[str(a) for a in args], "--device", "cpu"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)


def one_process(args: list, cache: Path):
    return CliRunner().invoke(app, [*[str(a) for a in args], "--device", "cpu", "--cache-dir", str(cache)])


def entry_dir(cache: Path, key: str) -> Path:
    return cache / "stats" / key


def tensors(entry: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(entry.glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_entry(ours: Path, theirs: Path, rtol: float = 1e-6) -> None:
    """Same manifest apart from the creation time and the files' checksums; tensors equal to `rtol` (of each
    tensor's largest value): the ranks add the same numbers in another order."""
    mine, other = (json.loads((p / "manifest.json").read_text()) for p in (ours, theirs))
    for field in ("created", "files"):
        mine.pop(field), other.pop(field)
    assert mine == other
    a, b = tensors(ours), tensors(theirs)
    assert a.keys() == b.keys() and len(a) > 4
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        scale = b[name].double().abs().max().clamp_min(1e-30)
        assert float((a[name].double() - b[name].double()).abs().max() / scale) <= rtol, name


def test_two_processes_calibrate_the_single_process_entry(tiny_dir, text_file, tmp_path):
    args = ["calibrate", tiny_dir, "--data", text_file, *CALIBRATION, "--gram", "--json"]
    ran = torchrun(2, args, tmp_path / "ranks")
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads(ran.stdout)  # rank 0 alone reports: one JSON document
    single = one_process(args, tmp_path / "one")
    assert single.exit_code == 0, single.output
    assert json.loads(single.stdout)["key"] == summary["key"] and summary["hit"] is False
    assert_same_entry(entry_dir(tmp_path / "ranks", summary["key"]), entry_dir(tmp_path / "one", summary["key"]))
    assert not list((tmp_path / "ranks" / "stats").glob(".tmp-*"))


def test_two_processes_prune_with_pruned_propagation_like_one(tiny_dir, text_file, tmp_path):
    """SparseGPT and Wanda from one launch (out/<method> each), against one process."""
    args = ["prune", tiny_dir, "-m", "sparsegpt,wanda", "--propagate", "pruned", "--data", text_file, *CALIBRATION,
            "--json"]
    ran = torchrun(2, [*args, "--out", tmp_path / "ranks-out"], tmp_path / "ranks")
    assert ran.returncode == 0, ran.stderr[-3000:]
    reports = json.loads(ran.stdout)  # rank 0 alone reports
    single = one_process([*args, "--out", tmp_path / "one-out"], tmp_path / "one")
    assert single.exit_code == 0, single.output
    assert [r["overall_sparsity"] for r in reports] == [r["overall_sparsity"] for r in json.loads(single.stdout)]
    for method in ("sparsegpt", "wanda"):
        ours, theirs = (load_file(tmp_path / d / method / "model.safetensors") for d in ("ranks-out", "one-out"))
        for name, weight in theirs.items():
            assert torch.equal(ours[name] == 0, weight == 0), (method, name)  # the same masks
            torch.testing.assert_close(ours[name], weight, rtol=1e-5, atol=1e-5)
    propagated = sorted(p.name for p in (tmp_path / "ranks" / "stats").iterdir() if "-p" in p.name and p.is_dir())
    assert len(propagated) == 2  # rank 0 wrote each run's statistics once, under the single-process keys
    for name in propagated:
        # SparseGPT's updates of block 0 carry the Gram matrices' float order (~1e-7) into block 1's inputs
        assert_same_entry(tmp_path / "ranks" / "stats" / name, tmp_path / "one" / "stats" / name, 1e-5)


def test_more_processes_than_windows_under_torchrun(tiny_dir, text_file, tmp_path):
    ran = torchrun(3, ["calibrate", tiny_dir, "--data", text_file, "-n", 2, "-l", 32], tmp_path / "cache")
    ours = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert ran.returncode != 0 and len(ours) == 1 and "3 processes for 2 calibration window(s)" in ours[0]
    assert "exitcode  : 2" in ran.stderr  # torchrun's own report: our processes exited 2 (torchrun itself exits 1)
    assert not (tmp_path / "cache" / "stats").exists() or not any((tmp_path / "cache" / "stats").iterdir())


@pytest.mark.parametrize("rank", [0, 2])
def test_a_bad_split_is_one_line_and_exit_2_in_each_process(tiny_dir, text_file, cache, monkeypatch, rank):
    """What each torchrun worker does (its environment, without the launcher): refused before any collective."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", str(rank))
    result = one_process(["calibrate", tiny_dir, "--data", text_file, "-n", 2, "-l", 32], cache)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    if rank == 0:
        assert len(lines) == 1 and "--nproc-per-node 2 or fewer" in lines[0]
    else:  # the same mistake on every rank: rank 0 says it once
        assert lines == []
    assert not (cache / "stats").exists() or not any((cache / "stats").iterdir())


def test_commands_that_do_not_split_refuse_torchrun(cache, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["cache", "ls"])
    assert result.exit_code == 2 and "`zprune cache` runs as one process" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_one_process_never_touches_torch_distributed(tiny_dir, text_file, cache, monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("a process group in a single run"))
    result = one_process(["prune", tiny_dir, "-m", "sparsegpt", "--propagate", "pruned", "--data", text_file,
                          "-n", 2, "-l", 16, "--no-save"], cache)
    assert result.exit_code == 0, result.output
    assert not dist.is_initialized()


def test_shards_are_contiguous_in_rank_order(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    shards = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shards.append(distributed.shard(7))
    assert shards == [range(0, 3), range(3, 5), range(5, 7)]


def test_groups_are_laid_out_as_one_process_finds_them():
    """An expert only rank 1 reached joins its shared-input group; layers no rank reached come last."""
    rank0 = [(["q", "k", "v"], True), (["e0.gate", "e0.up"], True), (["e1.gate"], False), (["e1.up"], False),
             (["e2.gate"], False), (["e2.up"], False)]
    rank1 = [(["q", "k", "v"], True), (["e1.gate", "e1.up"], True), (["e0.gate"], False), (["e0.up"], False),
             (["e2.gate"], False), (["e2.up"], False)]
    assert _layout([rank0, rank1]) == [["q", "k", "v"], ["e0.gate", "e0.up"], ["e1.gate", "e1.up"], ["e2.gate"], ["e2.up"]]


def test_two_processes_calibrate_fused_moe_experts_like_one(text_file, tmp_path):
    """Each rank routes its own windows: an expert one rank never reaches is zeros there and summed in."""
    from conftest import save_tiny

    folder = save_tiny(tmp_path / "mixtral", "mixtral")
    args = ["calibrate", folder, "--data", text_file, *CALIBRATION, "--gram", "--json"]
    ran = torchrun(2, args, tmp_path / "ranks")
    assert ran.returncode == 0, ran.stderr[-3000:]
    single = one_process(args, tmp_path / "one")
    assert single.exit_code == 0, single.output
    key = json.loads(ran.stdout)["key"]
    assert_same_entry(entry_dir(tmp_path / "ranks", key), entry_dir(tmp_path / "one", key))
    manifest = json.loads((entry_dir(tmp_path / "one", key) / "manifest.json").read_text())
    members = {m for g in manifest["blocks"][0]["groups"] for m in g["members"]}
    assert {f"mlp.experts.down_proj.{e}" for e in range(4)} <= members
