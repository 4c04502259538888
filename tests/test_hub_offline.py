"""A hub model with no network: every command gives the same one line, at once, with no retry lines."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from zprune_cli.base import hub
from zprune_cli.cli.app import app

runner = CliRunner()
MODEL = "meta-llama/Llama-2-7b-hf"
COMMANDS = [["prune", MODEL, "--method", "wanda", "--no-save"], ["calibrate", MODEL], ["prune", MODEL, "--dry-run"],
            ["calibrate", MODEL, "--dry-run"], ["eval", MODEL], ["compare", MODEL, "--method", "magnitude"]]


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE unset, and a hub endpoint that refuses connections at once."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_REACHED", set())


def one_line_each(capfd) -> list[str]:
    lines = []
    for command in COMMANDS:
        started = time.perf_counter()
        result = runner.invoke(app, command)
        seconds = time.perf_counter() - started
        assert result.exit_code == 1 and seconds < 3, (command, result.output, seconds)  # the hub client alone: 25 s
        [line] = result.stderr.splitlines()
        lines.append(line)
    leaked = capfd.readouterr().err  # what a logging handler wrote to the process's own stderr
    assert "Retry" not in leaked and "thrown while requesting" not in leaked, leaked
    return lines


def test_no_network_fails_every_command_with_one_quick_line(no_network, cache, capfd):
    assert set(one_line_each(capfd)) == {
        f"error: model {MODEL} is on the Hugging Face hub, which cannot be reached (Connection refused); pass a local "
        "folder or .gguf file, or set HF_HUB_OFFLINE=1 to use a cached download"}


def test_hf_hub_offline_without_a_cached_copy_fails_every_command_alike(cache, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    assert set(one_line_each(capfd)) == {
        f"error: model {MODEL} is not in the local hub cache and HF_HUB_OFFLINE is set; pass a local folder or .gguf "
        "file, or download it first (with a network, HF_HUB_OFFLINE unset)"}


def test_the_hub_client_retries_quietly(monkeypatch, capfd):
    """Past our check (the endpoint answered, then a request failed), the client's retry warnings stay quiet."""
    import logging

    from zprune_cli.models.load import quiet_transformers

    with quiet_transformers():
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    assert "Retry" not in capfd.readouterr().err
