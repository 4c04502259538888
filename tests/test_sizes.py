"""Calibration sizes checked before any work: sizes no memory here can hold are refused (exit 2) before the
model loads, naming the number and the bytes; a text that holds no window is refused, one the windows would
overlap heavily is said with the sizes that fit; --dry-run says exactly what the run says."""

from __future__ import annotations

import random
import types

import pytest
import torch
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.data.fit import WindowFit, covered_tokens
from zprune_cli.base.machine import host_memory_bytes, human_bytes

runner = CliRunner()
HIDDEN = 32  # conftest's TINY model; float32 on the CPU


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every model load, recorded (the weights are still loaded: a refusal must come before any)."""
    from zprune_cli.models import handle

    calls, real = [], handle.load_model
    monkeypatch.setattr(handle, "load_model", lambda source, *a, **k: calls.append(source.spec) or real(source, *a, **k))
    return calls


def error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- sizes no memory here can hold ------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["calibrate"], ["prune", "-m", "wanda", "--no-save"], ["compare", "-m", "wanda"],
                                     ["calibrate", "--dry-run"], ["prune", "--dry-run"]])
def test_absurd_sizes_are_refused_before_the_model_loads(tiny_dir, text_file, cache, loads, command):
    n, seqlen = 10**12, 64
    result = invoke(*command[:1], tiny_dir, *command[1:], "--data", text_file, "-n", n, "-l", seqlen)
    ids, inputs = n * seqlen * 8, 2 * n * seqlen * HIDDEN * 4
    assert error_line(result, 2) == (
        f"error: --nsamples {n} x --seqlen {seqlen} needs {human_bytes(ids + inputs)} of memory (RAM and swap) for the "
        f"windows (token ids {human_bytes(ids)}) and block 0's inputs with their buffer ({human_bytes(inputs)}); this "
        f"machine has {human_bytes(host_memory_bytes())}: lower --nsamples or --seqlen")
    assert loads == [] and not (cache / "stats").exists()


def test_the_memory_bound_is_the_exact_need(tiny_dir, monkeypatch):
    """need = token ids + 2 x block inputs on the CPU; on an accelerator the inputs are checked against its memory
    and the host holds the ids and one copy of the inputs."""
    from zprune_cli.verbs import calibration
    from zprune_cli.base.errors import ZpruneUsageError
    from zprune_cli.models.handle import ModelHandle
    from zprune_cli.base.settings import Calibration

    cal = Calibration("c4", nsamples=3, seqlen=10)
    ids, inputs = 3 * 10 * 8, 2 * 3 * 10 * HIDDEN * 4
    handle = ModelHandle(str(tiny_dir))
    monkeypatch.setattr(calibration, "host_memory_bytes", lambda: ids + inputs)
    calibration.check_memory(handle, cal)  # exactly enough
    monkeypatch.setattr(calibration, "host_memory_bytes", lambda: ids + inputs - 1)
    with pytest.raises(ZpruneUsageError, match=r"of memory \(RAM and swap\)"):
        calibration.check_memory(handle, cal)
    gpu = types.SimpleNamespace(config=handle.config, dtype=torch.bfloat16, device=torch.device("cuda", 0))
    monkeypatch.setattr(calibration, "host_memory_bytes", lambda: 10**12)
    monkeypatch.setattr(calibration, "device_memory_bytes", lambda device: inputs // 2)  # bfloat16: half of float32
    calibration.check_memory(gpu, cal)
    monkeypatch.setattr(calibration, "device_memory_bytes", lambda device: inputs // 2 - 1)
    with pytest.raises(ZpruneUsageError, match="of cuda:0 memory"):
        calibration.check_memory(gpu, cal)


def test_an_entry_larger_than_the_free_disk_is_refused_before_the_model_loads(tiny_dir, text_file, cache, loads, monkeypatch):
    from zprune_cli.verbs import calibration

    monkeypatch.setattr(calibration, "free_disk_bytes", lambda folder: 1000)
    line = error_line(invoke("calibrate", tiny_dir, "--data", text_file, "-n", 4, "-l", 64), 1)
    need = 4 * 64 * HIDDEN * 4 + 4 * 64 * 8
    assert line == (f"error: the statistics entry needs at least {human_bytes(need)} (block 0's inputs of --nsamples 4 x "
                    f"--seqlen 64) and the disk of {cache} has 1000 B free; free space, point --cache-dir elsewhere, "
                    "or lower --nsamples or --seqlen")
    assert loads == []


# --- windows against the text ----------------------------------------------------------------------------
def test_covered_tokens_and_capacity_by_hand():
    assert covered_tokens([(0, 0), (0, 5), (0, 3), (1, 0)], 4) == 9 + 4  # doc 0: [0, 9); doc 1: [0, 4)
    fit = WindowFit(nsamples=10, seqlen=4, lengths=(21, 3, 9), covered=13, documents=True)
    assert fit.capacity(4) == 5 + 2  # (21-1)//4 + (9-1)//4; the 3-token document holds none
    assert [fit.capacity(L) for L in (6, 7, 8, 9)] == [3 + 1, 2 + 1, 2 + 1, 2]  # at 9 the 9-token document holds none
    assert fit.longest_seqlen(3) == 8 and fit.longest_seqlen(50) == 0 and fit.reuse == 40 / 13


def test_a_text_with_no_window_is_refused_before_the_model_loads(tiny_dir, tmp_path, cache, loads):
    short = tmp_path / "short.txt"
    short.write_text("x" * 40)  # the byte tokenizer: 40 tokens and BOS
    expected = "error: calibration text is too short: 41 tokens, and a window of --seqlen 64 needs more; lower --seqlen (below 41) or use longer text"
    run = invoke("calibrate", tiny_dir, "--data", short, "-n", 2, "-l", 64)
    dry = invoke("calibrate", tiny_dir, "--data", short, "-n", 2, "-l", 64, "--dry-run")
    assert error_line(run, 2) == expected and error_line(dry, 2) == expected
    assert loads == []


def overlap_warning(result) -> str:
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    return warnings[0]


def test_heavy_overlap_is_said_before_the_model_loads_with_the_sizes_that_fit(tiny_dir, tmp_path, cache, loads):
    text = tmp_path / "notes.txt"
    text.write_text("".join(chr(97 + (i * 7) % 26) for i in range(999)))  # 999 bytes: 1,000 tokens with BOS
    n, seqlen = 64, 100  # 6,400 tokens drawn from 1,000
    run = invoke("calibrate", tiny_dir, "--data", text, "-n", n, "-l", seqlen)
    line = overlap_warning(run)
    assert line.startswith(f"warning: --nsamples 64 x --seqlen 100 draws 6,400 tokens from 1,000 tokens of {text}: the "
                           "windows overlap, each token read ")
    # without overlap: (1000 - 1) // 100 = 9 windows of 100, or 64 windows of (1000 - 1) // 64 = 15 tokens
    assert line.endswith("times on average; without overlap it holds --nsamples 9 --seqlen 100 or --nsamples 64 --seqlen 15")
    random.seed(0)  # the draw, replayed: seed 0, one start per window in [0, 1000 - 100 - 1]
    covered = covered_tokens([(0, random.randint(0, 899)) for _ in range(n)], seqlen)
    assert f"each token read {6400 / covered:.1f} times" in line
    assert loads == [str(tiny_dir)]
    assert overlap_warning(invoke("calibrate", tiny_dir, "--data", text, "-n", n, "-l", seqlen, "--dry-run")) == line
    # prune calibrates as calibrate does (a fresh cache: a stored entry is used without drawing anything)
    assert overlap_warning(invoke("prune", tiny_dir, "--data", text, "-n", n, "-l", seqlen, "--no-save",
                                  "--cache-dir", tmp_path / "fresh")) == line


def test_the_overlap_is_said_before_the_model_loads(tiny_dir, tmp_path, cache, monkeypatch):
    from zprune_cli.models import handle

    def refuse(*args, **kwargs):
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr(handle, "load_model", refuse)
    text = tmp_path / "notes.txt"
    text.write_text("a few words, " * 40)
    result = invoke("calibrate", tiny_dir, "--data", text, "-n", 64, "-l", 100)
    assert result.exit_code == 1 and "the model was loaded" in result.stderr
    assert result.stderr.index("warning: --nsamples 64 x --seqlen 100 draws") < result.stderr.index("error:")


def test_ample_text_gives_no_warning(tiny_dir, text_file, cache):
    result = invoke("calibrate", tiny_dir, "--data", text_file, "-n", 4, "-l", 64)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


def test_documents_overlap_warning_counts_only_documents_longer_than_a_window(tiny_dir, tmp_path, cache):
    import json

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a" * 299, "b" * 30, "c" * 199]))
    line = overlap_warning(invoke("calibrate", tiny_dir, "--data", docs, "-n", 40, "-l", 50, "--dry-run"))
    # 300 and 200 tokens (with BOS) hold windows of 50; the 31-token document none
    assert "draws 2,000 tokens from 500 tokens (in documents longer than a window) of" in line
    # (299 // 50) + (199 // 50) = 5 + 3 = 8 windows of 50; 40 windows: 299//L + 199//L + 30//L >= 40 up to L = 13
    # (23 + 15 + 2; the short document holds windows of 13)
    assert line.endswith("without overlap it holds --nsamples 8 --seqlen 50 or --nsamples 40 --seqlen 13")


def test_drawing_before_loading_builds_the_tokenizer_once(tiny_dir, text_file, cache, monkeypatch):
    """The windows need the tokenizer before the model loads; the model's load hands that one back."""
    from zprune_cli.models import handle, load

    built = []
    for module in (handle, load):
        real = module.load_tokenizer
        monkeypatch.setattr(module, "load_tokenizer", lambda source, real=real: built.append(source.spec) or real(source))
    assert invoke("calibrate", tiny_dir, "--data", text_file, "-n", 2, "-l", 32).exit_code == 0
    assert built == [str(tiny_dir)]
