"""`eval --baseline` measures the dense model a folder was pruned from, found by its record (where it was, or
where it lies relative to the pruned folder) and verified by its content fingerprint; another model in its
place is refused in one line before anything is measured, whatever directory the command runs from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import save_tiny
from zprune_cli.cli.app import app
from zprune_cli.models.resolve import content_fingerprint, resolve_model
from zprune_cli.records.results import ResultsStore, results_path

runner = CliRunner()
EVAL = ["--eval-seqlen", "32", "--max-windows", "2", "--json"]
SAME_TIME = 1_700_000_000  # every weight file of both models gets this mtime: sizes and times then agree


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def project(tmp_path, text_file, cache, monkeypatch):
    """project/models/tiny pruned from inside project/ (the spec is relative), and elsewhere/models/tiny: another
    model of the same shapes, its files' sizes and times equal to the base model's."""
    base, other = save_tiny(tmp_path / "project" / "models" / "tiny", seed=0), save_tiny(tmp_path / "elsewhere" / "models" / "tiny", seed=1)
    for folder in (base, other):
        for file in folder.iterdir():
            os.utime(file, (SAME_TIME, SAME_TIME))
    monkeypatch.chdir(tmp_path / "project")
    result = invoke("prune", "models/tiny", "-m", "magnitude", "--out", "runs/p50", "-q")
    assert result.exit_code == 0, result.output
    return {"root": tmp_path, "base": base, "other": other, "pruned": tmp_path / "project" / "runs" / "p50",
            "text": text_file}


def dense_ppl(model: Path, text: Path) -> float:
    report = json.loads(invoke("eval", model, "--eval", text, *EVAL, "--force").stdout)
    return next(m["value"] for m in report["metrics"] if m["metric"].startswith("ppl:"))


def baseline(pruned: Path, text: Path, *extra) -> tuple[dict, object]:
    result = invoke("eval", pruned, "--eval", text, *EVAL, "--baseline", *extra)
    return (json.loads(result.stdout) if result.exit_code == 0 else None), result


def refusal(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_the_record_names_the_place_and_the_content(project):
    record = json.loads((project["pruned"] / "zprune.json").read_text())["base_model"]
    assert record["spec"] == "models/tiny" and record["location"] == str(project["base"].resolve())
    assert record["relative"] == "../../models/tiny"
    assert record["content"] == content_fingerprint(resolve_model(str(project["base"])))


def test_the_right_baseline_from_another_directory(project, monkeypatch):
    """From elsewhere/, where models/tiny is another model, the recorded model is measured, not ./models/tiny."""
    monkeypatch.chdir(project["root"] / "elsewhere")
    report, result = baseline(project["pruned"], project["text"])
    assert result.exit_code == 0, result.output
    assert report["baseline"]["target"] == str(project["base"].resolve())
    base_ppl = next(m["value"] for m in report["baseline"]["metrics"] if m["metric"].startswith("ppl:"))
    assert base_ppl == dense_ppl(project["base"], project["text"]) != dense_ppl(project["other"], project["text"])


def test_another_model_in_its_place_is_refused_before_anything_is_measured(project, cache):
    """Same file names, sizes and times (what the location fingerprint compares): only the content tells."""
    for file in project["base"].iterdir():
        shutil.copy2(project["other"] / file.name, file)
    assert resolve_model(str(project["base"])).fingerprint == json.loads(
        (project["pruned"] / "zprune.json").read_text())["base_model"]["fingerprint"]  # the old check would pass
    line = refusal(baseline(project["pruned"], project["text"])[1])
    recorded = json.loads((project["pruned"] / "zprune.json").read_text())["base_model"]["content"]
    found = content_fingerprint(resolve_model(str(project["base"])))
    assert line == (f"error: the base model that {project['pruned'] / 'zprune.json'} records (models/tiny, content {recorded}) "
                    f"is in none of its places: {project['base'].resolve()} holds another model (content {found}); --baseline "
                    "measures no other model in its place")
    assert ResultsStore(results_path(cache)).query() == []  # refused before the pruned model was measured
    dry = invoke("eval", project["pruned"], "--eval", project["text"], "--baseline", "--dry-run")
    assert refusal(dry) == line


def test_moved_together_it_is_found_beside_the_pruned_folder(project, monkeypatch):
    monkeypatch.chdir(project["root"])
    moved = project["root"] / "moved"
    shutil.move(project["root"] / "project", moved)
    report, result = baseline(moved / "runs" / "p50", project["text"])
    assert result.exit_code == 0, result.output
    assert report["baseline"]["target"] == str(moved / "models" / "tiny")
    # the record, rewritten by eval (its results), still points beside itself
    assert json.loads((moved / "runs" / "p50" / "zprune.json").read_text())["base_model"]["relative"] == "../../models/tiny"


def test_a_copy_with_new_times_is_the_same_model(project):
    """Copied without its times (cp -r): the location fingerprint changes, the content does not."""
    saved = project["root"] / "saved"
    shutil.copytree(project["base"], saved)
    shutil.rmtree(project["base"])
    shutil.copytree(saved, project["base"], copy_function=shutil.copy)  # contents, not times
    recorded = json.loads((project["pruned"] / "zprune.json").read_text())["base_model"]
    assert resolve_model(str(project["base"])).fingerprint != recorded["fingerprint"]  # what was refused before
    report, result = baseline(project["pruned"], project["text"])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    assert report["baseline"]["target"] == str(project["base"].resolve())


def test_an_export_finds_the_base_model_after_both_moved(project, monkeypatch):
    monkeypatch.chdir(project["root"])
    exported = project["root"] / "project" / "exports" / "p50-sparse"
    assert invoke("export", project["pruned"], "--to", exported, "-f", "sparse", "--json").exit_code == 0
    assert json.loads((exported / "zprune.json").read_text())["base_model"]["relative"] == "../../models/tiny"
    shutil.move(project["root"] / "project", project["root"] / "moved")
    report, result = baseline(project["root"] / "moved" / "exports" / "p50-sparse", project["text"])
    assert result.exit_code == 0, result.output
    assert report["baseline"]["target"] == str(project["root"] / "moved" / "models" / "tiny")


def _make_old(pruned: Path) -> None:
    """What zprune wrote before content fingerprints: no content, no relative."""
    path = pruned / "zprune.json"
    data = json.loads(path.read_text())
    for key in ("content", "relative"):
        data["base_model"].pop(key)
    path.write_text(json.dumps(data))


def test_an_older_record_is_verified_by_its_location_fingerprint_or_used_with_a_warning(project):
    _make_old(project["pruned"])
    report, result = baseline(project["pruned"], project["text"])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output  # still where and as it was
    _make_old(project["pruned"])  # eval rewrote the record (its results): strip it again
    os.utime(project["base"] / "model.safetensors", (SAME_TIME + 1, SAME_TIME + 1))
    report, result = baseline(project["pruned"], project["text"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {project['pruned'] / 'zprune.json'} records no content fingerprint of its base model "
                        f"(written by an older zprune): {project['base'].resolve()} is measured as the dense baseline unverified"]


def test_an_older_record_reads_a_relative_spec_against_the_pruned_folder(tmp_path, text_file, cache, monkeypatch):
    """Nothing at its absolute place: the spec is tried beside the pruned folder, never in the working directory."""
    from zprune_cli.records.provenance import BaseModel, locate_base_model

    save_tiny(tmp_path / "runs" / "models" / "tiny")
    save_tiny(tmp_path / "cwd" / "models" / "tiny", seed=1)
    monkeypatch.chdir(tmp_path / "cwd")
    old = BaseModel("models/tiny", str(tmp_path / "gone" / "models" / "tiny"), "0" * 16)
    source, warning = locate_base_model(old, tmp_path / "runs")
    assert source.location == str(tmp_path / "runs" / "models" / "tiny") and "unverified" in warning


def test_content_fingerprint_follows_the_weights_not_the_place(tmp_path):
    a = save_tiny(tmp_path / "a", seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config, indent=7))  # formatting alone
    fingerprint = content_fingerprint(resolve_model(str(a)))
    assert fingerprint == content_fingerprint(resolve_model(str(copy)))
    assert fingerprint != content_fingerprint(resolve_model(str(save_tiny(tmp_path / "b", seed=1))))
    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config))
    assert content_fingerprint(resolve_model(str(copy))) != fingerprint


def test_a_hub_id_stays_a_hub_id_with_its_revision(tmp_path):
    """Not in the local hub cache: the id and revision are looked up (no local folder is tried), with a warning."""
    from zprune_cli.records.provenance import BaseModel, locate_base_model

    (tmp_path / "org" / "name").mkdir(parents=True)  # a local folder spelled like the id is not the hub model
    record = BaseModel("org/name", "org/name", "f" * 16, revision="v2", content="0123456789abcdef")
    source, warning = locate_base_model(record, tmp_path)
    assert (source.location, source.revision, source.is_local) == ("org/name", "v2", False)
    assert warning == "org/name is not in the local hub cache: the dense baseline is downloaded unverified"
