"""SIGKILL and SIGTERM at many points of real `zprune` processes: a re-run matches an uninterrupted run
bit for bit, nothing corrupt is ever read, and nothing survives `cache gc` or the next write."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURE_DATA, save_tiny

pytestmark = pytest.mark.slow
C4 = str(next((FIXTURE_DATA / "c4").glob("*.jsonl")))
CALIBRATE = ["calibrate", "{model}", "--data", C4, "-n", "24", "-l", "256", "--gram", "--json", "-q"]
KILL_SEEDS = range(6)


def zprune(args: list[str], cache: Path, model: Path) -> subprocess.Popen:
    env = {**os.environ, "ZPRUNE_HOME": str(cache), "ZPRUNE_NO_PROGRESS": "1"}
    argv = [sys.executable, "-m", "zprune_cli", *[a.replace("{model}", str(model)) for a in args]]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    model = save_tiny(root / "model")
    started = time.perf_counter()
    code, out, err = finish(zprune(CALIBRATE, root / "reference", model))
    assert code == 0, err
    return model, Path(json.loads(out)["path"]), time.perf_counter() - started


def stats_tensors(entry: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(entry.glob("*.safetensors")) for k, v in load_file(f).items()}


def wait_for(predicate, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_sigkill_during_calibration(reference, tmp_path, seed):
    model, reference_entry, seconds = reference
    rng = random.Random(seed)
    cache = tmp_path / "cache"
    proc = zprune(CALIBRATE, cache, model)
    if seed % 2:  # odd seeds: while the entry is being written
        stats = cache / "stats"
        wait_for(lambda: stats.is_dir() and any(p.name.startswith(".tmp-") for p in stats.iterdir()), seconds * 3)
        time.sleep(rng.uniform(0, 0.3))
    else:  # even seeds: anywhere in the run, imports and tokenising included
        time.sleep(rng.uniform(0.2, seconds))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # whatever was left, nothing complete and corrupt: every entry present verifies
    code, out, err = finish(zprune(["cache", "verify", "--json"], cache, model))
    assert code == 0 and all(r["ok"] for r in json.loads(out)), (out, err)
    # the re-run gives exactly the uninterrupted statistics
    code, out, err = finish(zprune(CALIBRATE, cache, model))
    assert code == 0, err
    entry = Path(json.loads(out)["path"])
    assert entry.name == reference_entry.name
    ours, theirs = stats_tensors(entry), stats_tensors(reference_entry)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # and gc leaves nothing of the killed writer
    code, _, err = finish(zprune(["cache", "gc"], cache, model))
    assert code == 0, err
    left = [p.name for p in (cache / "stats").iterdir() if p.name.startswith(".tmp-") or p.suffix == ".lock"]
    assert left == []


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A model wide enough (19 M parameters, 76 MB) that saving it takes a moment to catch."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from conftest import byte_tokenizer

    folder = tmp_path_factory.mktemp("wide") / "model"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=260, max_position_embeddings=512)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def caught_writing(command: list[str], cache: Path, model: Path, dest: Path, timeout: float) -> subprocess.Popen:
    """A zprune process started (up to three times) until it is seen writing `dest` through a staging folder
    beside it: a write that finishes between two looks is no kill point."""
    staging = lambda: dest.parent.is_dir() and any(".zprune-tmp-" in p.name for p in dest.parent.iterdir())  # noqa: E731
    for _attempt in range(3):
        proc = zprune(command, cache, model)
        if wait_for(lambda: staging() or proc.poll() is not None, timeout) and staging():
            return proc
        proc.wait()
        shutil.rmtree(dest, ignore_errors=True)
    raise AssertionError(f"writing {dest.name} was never caught in progress")


@pytest.mark.parametrize("seed", range(2))
def test_sigkill_while_saving_is_swept_by_the_next_save(wide_model, tmp_path, seed):
    cache, out = tmp_path / "cache", tmp_path / "runs" / "pruned"
    prune = ["prune", "{model}", "-m", "wanda", "--data", C4, "-n", "2", "-l", "64", "--out", str(out), "-q"]
    proc = caught_writing(prune, cache, wide_model, out, 300)
    time.sleep(random.Random(seed).uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, _, err = finish(zprune([*prune, "--overwrite"], cache, wide_model))
    assert code == 0, err
    assert [p.name for p in out.parent.iterdir()] == ["pruned"] and (out / "zprune.json").is_file()


def test_sigterm_cleans_up_and_exits_143(reference, tmp_path):
    model, _, seconds = reference
    cache = tmp_path / "cache"
    proc = zprune(CALIBRATE, cache, model)
    stats = cache / "stats"
    assert wait_for(lambda: stats.is_dir() and any(p.name.startswith(".tmp-") for p in stats.iterdir()), seconds * 3)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 143 and lines == ["error: terminated; nothing half-written was kept"], err
    assert not [p for p in stats.iterdir() if p.name.startswith(".tmp-")]  # cleaned by the process itself


def handlers_in_place(proc: subprocess.Popen) -> None:
    """Wait until zprune's own code runs: its SIGTERM handler is in place (installed last, after SIGINT's)
    or already set to ignore (the command finished). Before that the interpreter is still starting
    (site, .pth files), where no Python code can catch a signal; Linux's /proc says which."""
    status, bit = Path(f"/proc/{proc.pid}/status"), 1 << (signal.SIGTERM - 1)
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (FileNotFoundError, ProcessLookupError):  # it ended between two looks
            return
        if (int(fields["SigCgt"], 16) | int(fields["SigIgn"], 16)) & bit:
            return
        time.sleep(0.001)


START_UP_DELAYS = [round(0.05 + i * (2.0 - 0.05) / 9, 3) for i in range(10)]  # 0.05 s to 2 s


IMPORTED_UNDER_A_SIGNAL = """
import os, signal, sys, time
sys.path.insert(0, {fake!r})
from zprune_cli import cli
cli._install()
try:
    import torch.ops_registry
    time.sleep(5)  # ordinary code, where the signal that waited is raised
    print("no signal")
except (cli.Terminated, cli.Interrupted) as exc:
    print(type(exc).__name__, sys.modules["torch"].FINISHED, sys.modules["torch.ops_registry"].FINISHED)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_torchs_import_waits_for_its_end(tmp_path, signum):
    """torch's import runs Python called from C++ (pybind11), where the signal's exception cannot unwind and
    aborts the process (SIGABRT, once in the start-up test above): the signal waits until the import has
    ended and is raised right after it, in ordinary code. A stand-in torch package on sys.path signals itself
    in the middle of its submodule's import, and both finish."""
    package = tmp_path / "torch"
    package.mkdir()
    (package / "__init__.py").write_text("FINISHED = 'yes'\n")
    (package / "ops_registry.py").write_text(
        "import os, signal, time\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "time.sleep(0.3)  # without the block the handler raises here\n"
        "FINISHED = 'yes'\n")
    done = subprocess.run([sys.executable, "-c", IMPORTED_UNDER_A_SIGNAL.format(fake=str(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    word = "Terminated" if signum == signal.SIGTERM else "Interrupted"
    assert done.stdout.split() == [word, "yes", "yes"], done.stdout + done.stderr


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc to see the handlers")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", START_UP_DELAYS)
def test_signal_during_start_up(tmp_path, tiny_dir, signum, delay):
    """A signal at any moment from zprune's first line (imports of torch and transformers included, and the
    way out) ends as an interrupt: one line, 130 / 143, never a death by signal (CPython's exit by SIGINT
    after a KeyboardInterrupt that passed through an exec(), once -2 on a loaded machine), a traceback, an
    'Exception ignored' or an internal error. 0 only when the command really finished. The command is a dry
    run, which reads the model's config: since `zprune --help` and `cache ls` import no torch (base/lazy.py)
    they finish in half a second, and this one still imports torch and transformers (3-5 s)."""
    command = ["prune", str(tiny_dir), "--method", "magnitude", "--dry-run", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "zprune_cli", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ZPRUNE_HOME": str(tmp_path)})
    time.sleep(delay)
    handlers_in_place(proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it had finished: the whole estimate, nothing on stderr
        assert json.loads(out)["dry_run"] is True and err == "", (out, err)
    else:
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        assert proc.returncode == 128 + signum, (proc.returncode, err)
        assert err.splitlines() == [f"error: {word}; nothing half-written was kept"], err


# --- export and compare, killed as real processes ---------------------------------------------------------
EXPORT_FORMATS = [("hf", "unstructured"), ("sparse", "unstructured"), ("sparse-24-bitmask", "2:4"), ("masks", "unstructured")]


@pytest.fixture(scope="module")
def wide_pruned(wide_model, tmp_path_factory):
    """The wide model pruned (unstructured and 2:4), and an uninterrupted export of each format."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for pattern in ("unstructured", "2:4"):
        out[pattern] = root / pattern.replace(":", "of")
        code, _, err = finish(zprune(["prune", "{model}", "-m", "magnitude", "-p", pattern, "--out", str(out[pattern]), "-q"],
                                     root / "cache", wide_model))
        assert code == 0, err
    for fmt, pattern in EXPORT_FORMATS:
        code, _, err = finish(zprune(["export", str(out[pattern]), "--to", str(root / f"ref-{fmt}"), "-f", fmt, "-q"],
                                     root / "cache", wide_model))
        assert code == 0, err
        out[fmt] = root / f"ref-{fmt}"
    return out


def export_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("fmt, pattern", EXPORT_FORMATS, ids=[f for f, _ in EXPORT_FORMATS])
def test_kill_during_export(wide_model, wide_pruned, tmp_path, fmt, pattern, sig):
    """Killed while the export is being written: no destination that looks complete; SIGTERM cleans up itself
    (exit 143), SIGKILL's staging folder goes with the next export there, which equals an uninterrupted one."""
    dest = tmp_path / "exports" / fmt
    export = ["export", str(wide_pruned[pattern]), "--to", str(dest), "-f", fmt, "-q"]
    proc = caught_writing(export, tmp_path / "cache", wide_model, dest, 120)
    time.sleep(random.Random(fmt).uniform(0, 0.05))
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert not dest.exists()
    if sig == signal.SIGTERM:
        assert code == 143 and err.strip().splitlines()[-1] == "error: terminated; nothing half-written was kept", err
        assert list(dest.parent.iterdir()) == []
    code, _, err = finish(zprune(export, tmp_path / "cache", wide_model))
    assert code == 0, err
    assert [p.name for p in dest.parent.iterdir()] == [fmt]  # the killed writer's staging folder is gone
    ours, reference = export_tensors(dest), export_tensors(wide_pruned[fmt])
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


COMPARE = ["compare", "{model}", "-m", "magnitude,wanda,ria", "-s", "0.3,0.5,0.7", "--data", C4, "-n", "4", "-l", "64",
           "--eval", C4, "--eval-seqlen", "64", "--max-windows", "6", "-f", "json", "-q"]


@pytest.fixture(scope="module")
def compare_reference(reference, tmp_path_factory):
    model = reference[0]
    code, out, err = finish(zprune(COMPARE, tmp_path_factory.mktemp("compare") / "cache", model))
    assert code == 0, err
    return leaderboard_values(out)


def leaderboard_values(out: str) -> dict:
    return {(r["method"], r.get("sparsity"), r.get("recipe")): r["metrics"] for r in json.loads(out)["rows"]}


def result_rows(cache: Path) -> int:
    db = cache / "results.sqlite"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("seed, sig", [(0, signal.SIGKILL), (1, signal.SIGKILL), (2, signal.SIGTERM)],
                         ids=["SIGKILL-0", "SIGKILL-1", "SIGTERM"])
def test_kill_during_a_compare_cell(reference, compare_reference, tmp_path, seed, sig):
    """Killed inside the grid: the results store stays sound with no cell half-recorded, and the re-run computes
    only the missing cells, giving exactly the uninterrupted leaderboard."""
    model = reference[0]
    cache = tmp_path / "cache"
    rng = random.Random(seed)
    cells_before = rng.randint(1, 8)  # the dense cell and up to seven pruned ones, two rows (ppl, sparsity) each
    proc = zprune(COMPARE, cache, model)
    assert wait_for(lambda: result_rows(cache) >= 2 * cells_before or proc.poll() is not None, 300)
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == (143 if sig == signal.SIGTERM else -9), err
    with sqlite3.connect(cache / "results.sqlite") as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        per_cell = conn.execute("SELECT recipe, COUNT(*) FROM runs GROUP BY fingerprint, method, recipe, stats_key").fetchall()
    assert all(count == 2 for _, count in per_cell), per_cell  # each recorded cell has both metrics, once
    code, out, err = finish(zprune(COMPARE, cache, model))
    assert code == 0, err
    assert json.loads(out)["computed"] == 10 - len(per_cell) and leaderboard_values(out) == compare_reference


@pytest.mark.parametrize("seed", range(2))
def test_sigkill_during_an_offloaded_prune_resumes_to_the_same_output(wide_model, tmp_path, seed):
    """The case resuming is for: a process killed outright (no cleanup ran) in the middle of a long offloaded
    prune. The same command resumes from its last recorded block and writes what an uninterrupted run writes."""
    from zprune_cli.verbs.partial import RECORD, partial_folder

    cache, out, whole = tmp_path / "cache", tmp_path / "runs" / "pruned", tmp_path / "whole"
    prune = ["prune", "{model}", "-m", "wanda", "--propagate", "pruned", "--offload", "disk", "--data", C4,
             "-n", "2", "-l", "64", "--out"]
    code, _, err = finish(zprune([*prune, str(whole)], tmp_path / "cache-whole", wide_model))
    assert code == 0, err
    record = partial_folder(out) / RECORD
    for _attempt in range(3):  # a run that finishes between the first record and the kill is no kill point
        proc = zprune([*prune, str(out)], cache, wide_model)
        assert wait_for(lambda: record.is_file() or proc.poll() is not None, 300), proc.communicate()
        time.sleep(random.Random(seed).uniform(0, 0.1))
        proc.send_signal(signal.SIGKILL)
        if proc.wait() == -signal.SIGKILL and not out.exists():
            break
        shutil.rmtree(out, ignore_errors=True)
    assert not out.exists() and json.loads(record.read_text())["blocks"] >= 1
    code, _, err = finish(zprune([*prune, str(out)], cache, wide_model))
    assert code == 0, err
    assert "resuming the prune left in" in err and [p.name for p in out.parent.iterdir()] == ["pruned"]
    assert not [p for p in (cache / "stats").iterdir() if p.name.startswith(".tmp-")]  # the killed writer's statistics
    a, b = export_tensors(whole), export_tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
