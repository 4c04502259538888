"""The on-disk activation-statistics store.

Layout: <cache_dir>/stats/<key>/manifest.json, inputs.safetensors (window token ids and block 0's
inputs) and block_NNN.safetensors (per input group: `<leader>.sumsq`, optionally `<leader>.gram`).
An entry is written into a temporary folder and renamed into place when complete, under a lock
file, so readers never see half an entry and two writers leave one valid entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from zprune_cli.errors import ZpruneError
from zprune_cli.stats.collect import InputGroup
from zprune_cli.stats.types import LayerStats

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StatsKey:
    """Everything the statistics depend on. Two equal keys give the same statistics."""

    model_fingerprint: str
    dtype: str
    data: str  # text source identity, e.g. "c4:train" or "file:/abs/path"
    data_hash: str  # content hash of a local source, or the hub revision
    nsamples: int
    seqlen: int
    seed: int
    gram: bool = False

    @property
    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def propagated(self, run: dict) -> "PropagatedKey":
        """The key of the statistics a pruned-propagation run collected on top of this entry."""
        return PropagatedKey(self.digest, run)

    def without_gram(self) -> "StatsKey":
        return StatsKey(**{**asdict(self), "gram": False})

    def with_gram(self) -> "StatsKey":
        return StatsKey(**{**asdict(self), "gram": True})


@dataclass(frozen=True)
class PropagatedKey:
    """Statistics of block l taken on the outputs of blocks < l already pruned by one run's settings."""

    base: str  # digest of the dense entry whose block-0 inputs the run started from
    run: dict  # every setting that changes the pruned weights (method, sparsity, pattern, ...)

    @property
    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT_VERSION, "base": self.base, "run": self.run}, sort_keys=True, default=str)
        return f"{self.base}-p{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


class StatsEntry:
    """A complete, verified store entry."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def store(self) -> "StatsStore":
        return StatsStore(self.path.parent.parent)

    @property
    def n_blocks(self) -> int:
        return len(self.manifest["blocks"])

    @property
    def has_gram(self) -> bool:
        return bool(self.manifest["settings"]["gram"])

    def block_stats(self, index: int, device: torch.device | str = "cpu") -> dict[str, LayerStats]:
        """Statistics of block `index` keyed by Linear name relative to the block."""
        block = self.manifest["blocks"][index]
        tensors = load_file(self.path / block["file"], device=str(device))
        result: dict[str, LayerStats] = {}
        for group in block["groups"]:
            leader = group["members"][0]
            stats = LayerStats(
                sumsq=tensors[f"{leader}.sumsq"], n_tokens=group["n_tokens"], gram=tensors.get(f"{leader}.gram")
            )
            for member in group["members"]:
                result[member] = stats
        return result

    def inputs(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(window token ids [n, seqlen], block 0's inputs [n, seqlen, hidden])."""
        tensors = load_file(self.path / "inputs.safetensors", device=str(device))
        return tensors["input_ids"], tensors["hidden"]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class StatsStore:
    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir).expanduser() / "stats"

    # --- reading -------------------------------------------------------------------------------
    def lookup(self, key: StatsKey) -> StatsEntry | None:
        """The entry for `key`; a request without Gram matrices is also served by one with them."""
        candidates = [key] if key.gram else [key, key.with_gram()]
        for candidate in candidates:
            path = self.root / candidate.digest
            if path.exists():
                return self.open(path)
        return None

    def get(self, key: StatsKey | PropagatedKey) -> StatsEntry | None:
        """The entry stored under exactly this key, or None."""
        path = self.root / key.digest
        return self.open(path) if path.exists() else None

    def open(self, path: Path) -> StatsEntry:
        """Open and verify an entry; refuse a partial or mismatched one with a clear message."""
        manifest_path = path / MANIFEST
        name = path.name
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            raise ZpruneError(
                f"statistics entry {name} is incomplete or corrupt (no readable manifest); remove it: zprune cache rm {name}"
            ) from None
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != name:
            raise ZpruneError(f"statistics entry {name} does not match this zprune version; remove it: zprune cache rm {name}")
        for fname, size in manifest.get("files", {}).items():
            file = path / fname
            if not file.is_file() or file.stat().st_size != size:
                raise ZpruneError(f"statistics entry {name} is missing or has a truncated {fname}; remove it: zprune cache rm {name}")
        return StatsEntry(path, manifest)

    def entries(self) -> list[tuple[Path, StatsEntry | None, str | None]]:
        """Every entry folder: (path, entry or None, problem or None). Temporary folders excluded."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.name.startswith(TMP_PREFIX):
                continue
            try:
                found.append((path, self.open(path), None))
            except ZpruneError as exc:
                found.append((path, None, str(exc)))
        return found

    def resolve_prefix(self, prefix: str) -> Path:
        matches = [p for p in (self.root.iterdir() if self.root.is_dir() else []) if p.is_dir() and p.name.startswith(prefix) and not p.name.startswith(TMP_PREFIX)]
        if not matches:
            raise ZpruneError(f"no statistics entry matches '{prefix}' (see: zprune cache ls)")
        if len(matches) > 1:
            raise ZpruneError(f"'{prefix}' matches {len(matches)} entries; give more characters of the key")
        return matches[0]

    # --- writing -------------------------------------------------------------------------------
    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ZpruneError(f"cache dir {self.root.parent} is not writable ({exc.strerror}); pass --cache-dir or set ZPRUNE_HOME") from None

    @contextmanager
    def locked(self, key: StatsKey | PropagatedKey) -> Iterator[None]:
        """Hold the key's lock file; a second writer waits here, then finds the entry complete."""
        self._ensure_root()
        lock_path = self.root / f"{key.digest}.lock"
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def writer(self, key: StatsKey | PropagatedKey, settings: dict) -> Iterator["EntryWriter"]:
        """Write an entry into a temp folder; it appears under its key only if the block exits cleanly."""
        self._ensure_root()
        tmp = self.root / f"{TMP_PREFIX}{key.digest}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        writer = EntryWriter(tmp, key, settings)
        try:
            yield writer
            writer.finish()
            final = self.root / key.digest
            if final.exists():  # replaced deliberately (e.g. adding Gram matrices): old one goes
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, path: Path) -> int:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path)
        lock = self.root / f"{path.name}.lock"
        lock.unlink(missing_ok=True)
        return size

    def garbage(self) -> list[Path]:
        """Temporary folders left by killed writers, corrupt entries and orphan locks."""
        if not self.root.is_dir():
            return []
        junk = [p for p in self.root.iterdir() if p.name.startswith(TMP_PREFIX) and not _writer_alive(p)]
        junk += [path for path, entry, problem in self.entries() if entry is None]
        return sorted(junk)


def _writer_alive(tmp: Path) -> bool:
    pid = tmp.name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError):
        return False
    return int(pid) != os.getpid()


class EntryWriter:
    def __init__(self, path: Path, key: StatsKey | PropagatedKey, settings: dict):
        self.path = path
        self.key = key
        self.settings = settings
        self.blocks: list[dict] = []
        self.extra: dict = {}

    def write_inputs(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> None:
        save_file({"input_ids": input_ids.contiguous().cpu(), "hidden": hidden.contiguous().cpu()}, self.path / "inputs.safetensors")

    def write_block(self, index: int, groups: list[InputGroup]) -> None:
        tensors = {}
        for group in groups:
            tensors[f"{group.name}.sumsq"] = group.sumsq.contiguous().cpu()
            if group.gram is not None:
                tensors[f"{group.name}.gram"] = group.gram.contiguous().cpu()
        fname = f"block_{index:03d}.safetensors"
        save_file(tensors, self.path / fname)
        self.blocks.append(
            {
                "index": index,
                "file": fname,
                "groups": [
                    {"members": g.members, "n_tokens": g.n_tokens, "n_sequences": g.n_sequences, "width": int(g.sumsq.numel())}
                    for g in groups
                ],
            }
        )

    def finish(self) -> None:
        files = {f.name: f.stat().st_size for f in self.path.iterdir() if f.is_file()}
        manifest = {
            "format": FORMAT_VERSION,
            "key": self.key.digest,
            "key_fields": asdict(self.key) if isinstance(self.key, StatsKey) else {"base": self.key.base, "run": self.key.run},
            "settings": self.settings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "blocks": self.blocks,
            "files": files,
            **self.extra,
        }
        tmp = self.path / (MANIFEST + ".part")
        tmp.write_text(json.dumps(manifest, indent=1))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(tmp, self.path / MANIFEST)
