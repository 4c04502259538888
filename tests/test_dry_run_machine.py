"""`--dry-run` against this machine: the wall-time estimate (FLOPs at measured rates), the memory check that
names the --offload that fits, and a folder holding only config.json (a Llama-2-7B made by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import zprune_cli as zp
from zprune_cli.cli.app import app
from zprune_cli.estimation import machine
from zprune_cli.estimation.estimate import Target, estimate_calibrate, estimate_prune
from zprune_cli.estimation.machine import Memory, checked, timed
from zprune_cli.estimation.shape import model_shape
from zprune_cli.estimation.throughput import Throughput, measure_throughput

GiB = 1 << 30
runner = CliRunner()
RATES = Throughput(flops_per_s=1e9, selected_per_s=1e6, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def llama_7b(tmp_path_factory) -> Path:
    """Llama-2-7B's config alone, as a user has it before downloading 13 GB of weights."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-2-7b-config")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    return folder


@pytest.fixture
def fixed_machine(monkeypatch):
    """A 23 GiB CPU machine whose rates are RATES, whatever this one is."""
    memory = {"memory": Memory(host_bytes=23 * GiB)}
    monkeypatch.setattr("zprune_cli.cli.dry_run.machine_memory", lambda device: memory["memory"])
    monkeypatch.setattr("zprune_cli.cli.dry_run.measure_throughput", lambda *args: RATES)
    return memory


def dry(*args) -> tuple[dict, str]:
    result = runner.invoke(app, [*map(str, args), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_llama_7b_on_a_23_gib_machine_names_the_offload_that_fits(llama_7b, fixed_machine):
    flags = ["--method", "wanda", "--data", "c4-sample", "-n", 128, "-l", 2048, "--no-save"]
    estimate, stderr = dry("prune", llama_7b, *flags)
    check = estimate["memory_check"]
    assert estimate["host_peak_bytes"] > 23 * GiB and check["fits"] is False and check["host_memory_bytes"] == 23 * GiB
    # on a CPU, --offload cpu keeps every block in host memory (and a second copy of the one running): disk
    offloaded, quiet = dry("prune", llama_7b, *flags, "--offload", "disk")
    assert (check["offload"], check["offload_fits"]) == ("disk", True)
    assert check["offload_host_peak_bytes"] == offloaded["host_peak_bytes"] < 23 * GiB
    assert offloaded["memory_check"]["fits"] is True and quiet == ""
    [line] = stderr.splitlines()
    assert line == (f"warning: the estimated peak host memory ({estimate['host_peak_bytes'] / GiB:.1f} GiB) exceeds this "
                    f"machine's 23.0 GiB; --offload disk would fit (estimated peak "
                    f"{offloaded['host_peak_bytes'] / GiB:.1f} GiB host)")
    fixed_machine["memory"] = Memory(host_bytes=4 * GiB)
    _, stderr = dry("prune", llama_7b, *flags)
    assert "; even --offload disk would not fit (estimated peak" in stderr


def test_offload_disk_dry_run_of_a_config_alone(llama_7b, fixed_machine):
    """The dry run reads no weights, so it needs no safetensors index: estimated as without --offload."""
    for command in (["calibrate"], ["prune", "--method", "wanda", "--no-save"]):
        estimate, _ = dry(*command, llama_7b, "--data", "c4-sample", "--offload", "disk")
        assert estimate["offload"] == "disk" and estimate["params"] == 6_738_415_616
    real = runner.invoke(app, ["prune", str(llama_7b), "--data", "c4-sample", "--offload", "disk", "--no-save"])
    assert real.exit_code == 2 and "has no model.safetensors or model.safetensors.index.json" in real.stderr


def test_a_device_too_small_is_told_to_offload_to_the_host(llama_7b):
    """On an accelerator (arithmetic only), --offload cpu holds one block on the device and every block on
    the host: named when the device is too small and the host large enough."""
    handle = zp.ModelHandle(str(llama_7b), "cpu", "float32")
    shape = model_shape(handle.config, handle.source)
    cal = zp.Calibration("c4-sample", nsamples=16, seqlen=2048)
    target = Target(shape, torch.bfloat16, torch.device("cuda"))
    estimate = checked(lambda t: estimate_calibrate(t, cal, False), target, Memory(host_bytes=64 * GiB, device_bytes=12 * GiB))
    host = estimate_calibrate(Target(shape, torch.bfloat16, torch.device("cuda"), "cpu"), cal, False)
    assert estimate.device_peak_bytes > 12 * GiB and estimate.memory_check["fits"] is False
    assert estimate.memory_check["offload"] == "cpu" and estimate.memory_check["offload_fits"] is True
    assert estimate.memory_check["offload_device_peak_bytes"] == host.device_peak_bytes < 12 * GiB


def test_time_estimate_is_the_flops_at_the_measured_rates(tiny_dir, fixed_machine):
    """The tiny Llama: 2 blocks of 9,216 projection weights (q 32x32, k and v 16x32, o 32x32, gate and up
    64x32, down 32x64), hidden 32. Calibration runs 1 + 2 x 3 block calls of 16 tokens (block 0 alone
    captures the inputs, then each block runs each window); Wanda scores and selects every weight once."""
    estimate, _ = dry("prune", tiny_dir, "--method", "wanda", "--data", "c4-sample", "-n", 3, "-l", 16, "--no-save")
    per_call = 2 * 9216 * 16 + 4 * 16**2 * 32  # projections, then Q K^T and A V over 16 tokens
    assert estimate["work"] == {"calibrating": {"flops": 7 * per_call, "selected": 0.0},
                                "pruning wanda 0.5": {"flops": 0.0, "selected": 2 * 9216}}
    t = estimate["time_estimate"]
    assert t["seconds"] == pytest.approx(7 * per_call / 1e9 + 2 * 9216 / 1e6, rel=1e-12)
    assert (t["flops_per_s"], t["selected_per_s"]) == (1e9, 1e6)
    table = runner.invoke(app, ["prune", str(tiny_dir), "--data", "c4-sample", "-n", "3", "-l", "16", "--no-save", "--dry-run"])
    assert "wall time (estimate)" in table.stdout and "loading the model" in table.stdout


def test_sparsegpt_adds_its_column_walk(tiny_dir):
    """Per layer [out, in]: 4/3 in^3 for H^-1 and its Cholesky factor, out x in^2 for the updates after each
    block, out x in x 128 inside the blocks (docs/dry-run.md)."""
    handle = zp.ModelHandle(str(tiny_dir), "cpu", "float32")
    shape = model_shape(handle.config, handle.source)
    layers = [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)] * 2
    assert sorted(shape.layer_shapes) == sorted(layers)
    cal = zp.Calibration("c4-sample", nsamples=2, seqlen=16)
    estimate = estimate_prune(Target(shape, torch.float32, torch.device("cpu")), cal, [zp.PruneRecipe("sparsegpt", 0.5)], None)
    walk = sum(4 / 3 * i**3 + o * i**2 + o * i * 128 for o, i in layers)
    assert estimate.work["pruning sparsegpt 0.5"] == {"flops": pytest.approx(walk), "selected": 2 * 9216}
    assert timed(estimate, RATES).time_estimate["by_step"]["pruning sparsegpt 0.5"] == pytest.approx(walk / 1e9 + 2 * 9216 / 1e6)


def test_the_rates_are_measured_in_tens_of_milliseconds():
    import time

    started = time.perf_counter()
    rates = measure_throughput(torch.device("cpu"), torch.float32)
    assert rates.flops_per_s > 1e8 and rates.selected_per_s > 1e4
    assert time.perf_counter() - started < 5  # about 0.1-0.2 s on a quiet 2-core machine; generous for a loaded one
    assert machine.machine_memory(torch.device("cpu")).host_bytes > 0


def test_a_magnitude_grid_is_estimated_without_calibration(tiny_dir, text_file, fixed_machine):
    """As the grid runs it: no calibration text, no store entry, only the evaluation passes (3 cells x 2 windows)."""
    ev = ["--eval", text_file, "--eval-seqlen", 32, "--max-windows", 2]
    magnitude, _ = dry("compare", tiny_dir, "--method", "magnitude", "--sparsity", "0.3,0.5", *ev)
    wanda, _ = dry("compare", tiny_dir, "--method", "wanda", "--sparsity", "0.3,0.5", "--data", text_file, "-n", 4, "-l", 16, *ev)
    assert (magnitude["store_bytes"], magnitude["model_passes"], magnitude["block_calls"]) == (0, 3 * 2, 3 * 2 * 2)
    assert "calibrating" not in magnitude["work"] and "calibrating" in wanda["work"]
    assert wanda["store_bytes"] > 0 and wanda["model_passes"] == 4 + 3 * 2
