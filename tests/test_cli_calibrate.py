"""`zprune calibrate` and `zprune cache` through the CLI runner: output, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def entries(cache):
    root = cache / "stats"
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def test_calibrate_json_then_hit(tiny_dir, text_file, cache):
    first = run("calibrate", tiny_dir, "--data", text_file, "-n", 2, "-l", 16, "--json")
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["hit"] is False and len(data["key"]) == 20 and data["size_bytes"] > 0
    second = run("--json", "calibrate", tiny_dir, "--data", text_file, "-n", 2, "-l", 16)
    assert json.loads(second.stdout)["hit"] is True

    ls = run("cache", "ls", "--json")
    rows = json.loads(ls.stdout)
    assert [r["key"] for r in rows] == [data["key"]] and rows[0]["nsamples"] == 2
    info = json.loads(run("cache", "info", data["key"][:6], "--json").stdout)
    assert info["groups"][0] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    dry = run("cache", "rm", data["key"], "--dry-run")
    assert dry.exit_code == 0 and "would remove" in dry.stdout and entries(cache)
    assert run("cache", "rm", data["key"]).exit_code == 0 and not entries(cache)


def test_gc_removes_leftovers(cache):
    tmp = cache / "stats" / ".tmp-deadbeef-999999"
    tmp.mkdir(parents=True)
    (tmp / "block_000.safetensors").write_bytes(b"x" * 10)
    assert "would remove" in run("cache", "gc", "--dry-run").stdout and tmp.exists()
    result = run("cache", "gc", "--json")
    assert json.loads(result.stdout)["removed"][0]["name"] == tmp.name and not tmp.exists()


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["no-such-org/no-such-model"], 1, "not in the local hub cache"),
        (["./missing-folder"], 2, "no model at"),
        (["{tiny}", "-n", "0"], 2, "--nsamples must be at least 1"),
        (["{tiny}", "-l", "100000"], 2, "beyond the model's maximum"),
        (["{tiny}", "--data", "{binary}"], 2, "not text"),
        (["{tiny}", "--data", "{nofield}"], 2, "no 'text' field"),
        (["{tiny}", "--data", "{short}", "-l", "64"], 2, "too short"),
        (["{tiny}", "--device", "cuda:7"], 2, "CUDA"),
    ],
)
def test_bad_input(args, code, needle, tiny_dir, text_file, tmp_path, cache):
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x00\xff" * 50)
    nofield = tmp_path / "d.jsonl"
    nofield.write_text('{"body": "x"}\n')
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    subst = {"{tiny}": tiny_dir, "{binary}": binary, "{nofield}": nofield, "{short}": short}
    full = ["calibrate", *[subst.get(a, a) for a in args]]
    if "--data" not in args:
        full += ["--data", text_file]
    line = one_line_error(run(*full), code)
    assert needle in line
    assert not entries(cache)  # never a partial entry


def test_unwritable_cache_dir(tiny_dir, text_file, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    line = one_line_error(run("calibrate", tiny_dir, "--data", text_file, "-n", 1, "-l", 8, "--cache-dir", blocker / "sub"), 1)
    assert "not writable" in line


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("zprune ")
