"""The perplexity protocols a local model's evaluation records, kept on disk so a fully cached re-run reads
neither its config nor its tokenizer.

A protocol holds the window length (capped by the model's maximum, from its config) and the number of
windows its tokenizer cuts the text into. For a GGUF file both come from parsing the file's header
(SmolLM2's 49,152-token vocabulary: about 10 s of CPU), although a `compare` or `evaluate` whose every cell
is in the results store needs nothing else from the model. So the answer is kept in
`<cache_dir>/protocols/<key>.json`, keyed by everything it depends on: the model's files (path, size and
modification time of the weights, and of a folder's config and tokenizer files), each text's identity and
content hash, the requested window length and window cap, and the versions of zprune, transformers and
tokenizers. Hub models are not kept (a branch can move without any local file changing).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Callable

from zprune_cli import __version__
from zprune_cli.models.resolve import WEIGHT_SUFFIXES, ModelSource
from zprune_cli.base.staging import write_file_atomically

FOLDER = "protocols"


def remembered(cache_dir: Path | str | None, source: ModelSource, wanted: dict, compute: Callable[[], dict]) -> dict:
    """`compute()` (metric -> protocol), or what it returned before for the same model files and `wanted`
    (the evaluation texts' identities and the window settings). None for cache_dir: always computed."""
    if cache_dir is None or not source.is_local:
        return compute()
    path = Path(cache_dir) / FOLDER / f"{_key(source, wanted)}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["protocols"]
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: computed and written again
        pass
    protocols = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": source.spec, "wanted": wanted, "protocols": protocols, "files": _files(source),
                  "versions": _versions()}
        text = json.dumps(record, sort_keys=True, indent=1)
        write_file_atomically(path, text.encode("utf-8"))
    except OSError:  # a read-only cache: the next run computes them again
        pass
    return protocols


def stale_records(cache_dir: Path | str) -> list[Path]:
    """Records no run can read again: their model's files changed or are gone (a new key is computed), the
    libraries changed, or the record is damaged or predates the file list. `zprune cache gc` removes them."""
    stale = []
    for path in sorted((Path(cache_dir) / FOLDER).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            current = record["versions"] == _versions() and all(_stat(f) == [size, mtime] for f, size, mtime in record["files"])
        except (OSError, ValueError, KeyError, TypeError):
            current = False
        if not current:
            stale.append(path)
    return stale


def _files(source: ModelSource) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime_ns) of every file the key depends on, so staleness is checked without the
    model spec (a relative path typed in another folder)."""
    folder = Path(source.location)
    return [(str(folder / name), size, mtime) for name, size, mtime in (*source.weight_files, *_side_files(source))]


def _stat(path: str) -> list[int] | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _versions() -> list[str | None]:
    return [__version__, _version("transformers"), _version("tokenizers")]


def _key(source: ModelSource, wanted: dict) -> str:
    payload = {"fingerprint": source.fingerprint, "side_files": _side_files(source), "wanted": wanted,
               "versions": _versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _side_files(source: ModelSource) -> list[tuple[str, int, int]]:
    """A model folder's files other than weights (config, tokenizer, code): what the fingerprint leaves out.
    A GGUF file holds its config and tokenizer itself (its folder may hold anything else)."""
    if source.gguf_file is not None:
        return []
    files = []
    for path in sorted(Path(source.location).iterdir()):
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
            stat = path.stat()
            files.append((path.name, stat.st_size, stat.st_mtime_ns))
    return files


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
