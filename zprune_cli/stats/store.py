"""The on-disk activation-statistics store.

Layout: <cache_dir>/stats/<key>/manifest.json, inputs.safetensors (window token ids and block 0's
inputs) and block_NNN.safetensors (per input group: `<leader>.sumsq`, `<leader>.sum`, optionally `<leader>.gram`).
An entry is written into a temporary folder and renamed into place when complete, under a lock
file, so readers never see half an entry and two writers leave one valid entry. The lock file lives
only while it is held: its holder removes it, and a lock left by a SIGKILLed writer is removed by the
next writer or `cache gc` (taking its flock first, so a held lock is never removed).

Nothing read from disk is trusted: the manifest is checked field by field, its file names must be
plain names inside the entry, and every file's size and sha256 are checked before the entry is used.
A bad entry raises CorruptEntry; the commands that need it remove it and compute it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from safetensors import safe_open

from zprune_cli.base import distributed
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError, os_error_of, translate
from zprune_cli.base.lazy import lazy
from zprune_cli.base.staging import pid_alive
from zprune_cli.stats.manifest import BlockRecord, GroupRecord, StatsManifest
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")
safetensors_torch = lazy("safetensors.torch")  # imports torch

if TYPE_CHECKING:
    from zprune_cli.stats.collect import InputGroup

# 2: a sha256 per file; 3: the first moment sum(x) per input group. Entries of an older format have
# other key digests and fail the manifest check: they are recomputed, never misread.
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_VERIFIED: set[tuple[str, int, int]] = set()  # (file, size, mtime) whose sha256 matched in this process
log = logging.getLogger("zprune")


class CorruptEntry(ZpruneError):
    """A store entry that is partial, damaged or of another format: remove it and compute it again."""


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
    # False: only the windows and block 0's inputs, all that pruned propagation starts from (no block pass)
    blocks: bool = True

    def __post_init__(self) -> None:
        if not self.blocks and self.gram:
            raise ValueError("a key without block statistics cannot ask for Gram matrices")

    @property
    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    @property
    def calibration_digest(self) -> str:
        """The digest of what the statistics were computed from (model, dtype, text, windows, seed), whichever of
        them are kept: block 0's inputs and each block's sums are the same in an inputs-only, a full and a Gram
        entry of one calibration, so results keyed by it do not depend on which entry served them."""
        return StatsKey(**{**asdict(self), "gram": False, "blocks": True}).digest

    def served_by(self) -> list["StatsKey"]:
        """The keys whose entries hold at least what this one asks for, cheapest first."""
        fuller = [StatsKey(**{**asdict(self), "blocks": True, "gram": False}), self.with_gram()]
        return list(dict.fromkeys([self, *(k for k in fuller if k.gram >= self.gram and k.blocks >= self.blocks)]))

    def with_gram(self) -> "StatsKey":
        return StatsKey(**{**asdict(self), "gram": True, "blocks": True})


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

    def __init__(self, path: Path, manifest: StatsManifest):
        self.path = path
        self.manifest = manifest

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def store(self) -> "StatsStore":
        return StatsStore(self.path.parent.parent)

    @property
    def n_blocks(self) -> int:
        return len(self.manifest.blocks)

    @property
    def has_gram(self) -> bool:
        return bool(self.manifest.settings["gram"])

    @property
    def has_blocks(self) -> bool:
        """Whether per-block statistics are stored (an inputs-only entry serves pruned propagation only)."""
        return bool(self.manifest.settings.get("block_statistics", True))

    def block_stats(self, index: int, device: torch.device | str = "cpu") -> dict[str, LayerStats]:
        """Statistics of block `index` keyed by Linear name relative to the block."""
        block = self.manifest.blocks[index]
        tensors = safetensors_torch.load_file(self.path / block.file, device=str(device))
        result: dict[str, LayerStats] = {}
        for group in block.groups:
            leader = group.members[0]
            stats = LayerStats(sumsq=tensors[f"{leader}.sumsq"], n_tokens=group.n_tokens,
                               gram=tensors.get(f"{leader}.gram"), sum=tensors[f"{leader}.sum"])
            for member in group.members:
                result[member] = stats
        return result

    def inputs(self, device: torch.device | str = "cpu", rows: range | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(window token ids [n, seqlen], block 0's inputs [n, seqlen, hidden]); with `rows`, those windows
        only, read without loading the others (a torchrun rank's shard)."""
        if rows is None:
            tensors = safetensors_torch.load_file(self.path / "inputs.safetensors", device=str(device))
            return tensors["input_ids"], tensors["hidden"]
        with safe_open(self.path / "inputs.safetensors", framework="pt", device=str(device)) as f:
            return (f.get_slice("input_ids")[rows.start : rows.stop], f.get_slice("hidden")[rows.start : rows.stop])

    def readable(self) -> "StatsEntry":
        """Self, or a one-line error when this process cannot see the entry's files (a torchrun rank on
        another node whose cache folder is not the one rank 0 wrote to)."""
        if not (self.path / MANIFEST).is_file():
            raise ZpruneError(f"process {distributed.rank()} cannot read statistics entry {self.key} at {self.path}: "
                              "under torchrun every node must see the same --cache-dir (a shared filesystem)")
        return self

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class StatsStore:
    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir).expanduser() / "stats"

    # --- reading -------------------------------------------------------------------------------
    def lookup(self, key: StatsKey, repair: bool = False) -> StatsEntry | None:
        """The entry for `key`, or one holding more (Gram matrices, block statistics) than it asks for.
        With `repair`, a corrupt entry is removed (and said so) and counts as missing."""
        for candidate in key.served_by():
            entry = self.get(candidate, repair)
            if entry is not None:
                return entry
        return None

    def get(self, key: StatsKey | PropagatedKey, repair: bool = False) -> StatsEntry | None:
        """The entry stored under exactly this key, or None (see `lookup` for `repair`)."""
        path = self.root / key.digest
        if not (path.exists() or path.is_symlink()):
            return None
        try:
            return self.open(path)
        except CorruptEntry as exc:
            if not repair:
                raise
            self.discard(path, str(exc))
            return None

    def open(self, path: Path) -> StatsEntry:
        """Open and verify an entry (manifest fields, file names, sizes, sha256); CorruptEntry if bad."""
        name = path.name
        fix = f"zprune cache rm {name} (the command that needs it computes it again)"
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            raise CorruptEntry(f"statistics entry {name} is incomplete or corrupt (no readable manifest); {fix}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("key") != name:
            raise CorruptEntry(f"statistics entry {name} was written by another zprune version or under another key; {fix}")
        problem = manifest_problem(manifest)
        if problem is None:
            problem = _files_problem(path, manifest["files"])
        if problem is not None:
            raise CorruptEntry(f"statistics entry {name} is corrupt: {problem}; {fix}")
        return StatsEntry(path, StatsManifest.from_json(manifest))

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
        """The entry named exactly `prefix`, else the one entry whose key starts with it (6+ characters)."""
        prefix = prefix.strip()
        if not prefix or "/" in prefix or prefix.startswith("."):
            raise ZpruneUsageError(f"'{prefix}' is not a statistics key (see: zprune cache ls)")
        names = [p for p in (self.root.iterdir() if self.root.is_dir() else [])
                 if (p.is_dir() or p.is_symlink()) and not p.name.startswith(TMP_PREFIX)]
        exact = [p for p in names if p.name == prefix]
        if exact:
            return exact[0]
        if len(prefix) < MIN_PREFIX:
            raise ZpruneUsageError(f"'{prefix}' is too short to stand for a key: give at least {MIN_PREFIX} characters")
        matches = [p for p in names if p.name.startswith(prefix)]
        if not matches:
            raise ZpruneUsageError(f"no statistics entry matches '{prefix}' (see: zprune cache ls)")
        if len(matches) > 1:
            raise ZpruneUsageError(f"'{prefix}' matches {len(matches)} entries; give more characters of the key")
        return matches[0]

    @contextmanager
    def claimed(self, key: StatsKey | PropagatedKey, find, progress=None) -> Iterator["StatsEntry | None"]:
        """The entry `find()` returns, or None while this process holds the key's lock to write it.

        Under torchrun rank 0 alone looks up and locks, and every rank gets its answer, so no rank
        computes alone and one writes. With one process: look up, else lock and look again (another
        writer may have finished while we waited)."""
        with ExitStack() as stack:
            entry = None
            if distributed.is_main():
                entry = find()
                if entry is None:
                    stack.enter_context(self.locked(key, progress))
                    entry = find()
            yield self.share(entry)

    @staticmethod
    def share(entry: "StatsEntry | None") -> "StatsEntry | None":
        """Rank 0's entry on every rank (its path and manifest; files are read only when asked)."""
        if not distributed.active():
            return entry
        found = distributed.broadcast_object(None if entry is None else (str(entry.path), entry.manifest))
        return None if found is None else StatsEntry(Path(found[0]), found[1])

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
    def locked(self, key: StatsKey | PropagatedKey, progress=None) -> Iterator[None]:
        """Hold the key's lock file; a second writer waits here (saying for whom, with a spinner), then
        finds the entry complete. ZPRUNE_LOCK_TIMEOUT=SECONDS makes it give up instead of waiting on."""
        self._ensure_root()
        lock_path = self.root / f"{key.digest}.lock"
        handle = _acquire(lock_path, key.digest, progress)
        try:
            for stale in self.root.glob("*.lock"):  # left by SIGKILLed writers (no `finally` ran there)
                if stale != lock_path:
                    remove_unheld_lock(stale)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(_command()), "since": time.strftime("%H:%M:%S")}))
            handle.flush()
            yield
        finally:
            _release(lock_path, handle)

    @contextmanager
    def writer(self, key: StatsKey | PropagatedKey, settings: dict, optional: bool = False) -> Iterator["EntryWriter"]:
        """Write an entry into a temp folder; it appears under its key only if the block exits cleanly.
        optional: a cache the run does not read back (a --propagate pruned run's statistics), dropped rather
        than left to fill the disk (EntryWriter.write_block)."""
        self._ensure_root()
        for stale in self.root.glob(f"{TMP_PREFIX}{key.digest}-*"):  # left by a killed writer of this key
            if not _writer_alive(stale) or stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f"{TMP_PREFIX}{key.digest}-{os.getpid()}"
        tmp.mkdir()
        writer = EntryWriter(tmp, key, settings, optional)
        try:
            yield writer
            if writer.dropped:
                return
            writer.finish()
            final = self.root / key.digest
            if final.exists():  # replaced deliberately (e.g. adding Gram matrices): old one goes
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, path: Path) -> int:
        """Remove an entry, a temporary folder or a lock file nobody holds (a symlinked entry: the link only)."""
        if path.suffix == ".lock" and not path.is_symlink():
            remove_unheld_lock(path)
            return 0
        if path.is_symlink() or path.is_file():
            path.unlink()
            return 0
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path)
        return size

    def discard(self, path: Path, why: str) -> None:
        """Remove a corrupt entry so the caller can compute it again; say so once."""
        log.warning("%s; computing it again", why.split("; zprune cache rm")[0])
        self.remove(path)

    def dead_writers(self) -> list[Path]:
        """Temporary folders of writers that were killed (no one will finish them)."""
        folders = self.root.iterdir() if self.root.is_dir() else []
        return [p for p in folders if p.name.startswith(TMP_PREFIX) and not _writer_alive(p)]

    def sweep_dead_writers(self) -> None:
        for path in self.dead_writers():
            shutil.rmtree(path, ignore_errors=True)

    def garbage(self) -> list[Path]:
        """Temporary folders left by killed writers, corrupt entries and lock files nobody holds."""
        if not self.root.is_dir():
            return []
        junk = self.dead_writers()
        junk += [path for path, entry, problem in self.entries() if entry is None]
        junk += [p for p in self.root.glob("*.lock") if not _lock_held(p)]
        return sorted(junk)


MIN_PREFIX = 6


def manifest_problem(m: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields (None: nothing), so a hand-edited or damaged one is refused."""
    if not isinstance(m.get("settings"), dict) or not isinstance(m.get("created"), str):
        return "the manifest has no settings or creation time"
    files, blocks = m.get("files"), m.get("blocks")
    if not isinstance(files, dict) or not isinstance(blocks, list):
        return "the manifest lists no files or blocks"
    for fname, info in files.items():
        if not _plain(fname):
            return f"the manifest names a file outside the entry ({fname!r})"
        if not (isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(info.get("sha256"), str)):
            return f"the manifest gives no size and sha256 for {fname}"
    for i, block in enumerate(blocks):
        if not (isinstance(block, dict) and block.get("index") == i and block.get("file") in files
                and isinstance(block.get("groups"), list)):
            return f"block {i} of the manifest is malformed"
        for group in block["groups"]:
            if not (isinstance(group, dict) and isinstance(group.get("members"), list) and group["members"]
                    and all(isinstance(x, str) for x in group["members"]) and isinstance(group.get("n_tokens"), int)):
                return f"an input group of block {i} is malformed"
    return None


def _plain(fname: Any) -> bool:
    return isinstance(fname, str) and bool(_PLAIN_NAME.match(fname)) and ".." not in fname


def _files_problem(path: Path, files: dict[str, dict]) -> str | None:
    for fname, info in files.items():
        file = path / fname
        if file.is_symlink() or not file.is_file():
            return f"{fname} is missing"
        stat = file.stat()
        if stat.st_size != info["size"]:
            return f"{fname} is truncated ({stat.st_size} of {info['size']} bytes)"
        memo = (str(file), stat.st_size, stat.st_mtime_ns)
        if memo not in _VERIFIED:
            if sha256_of(file) != info["sha256"]:
                return f"{fname} does not match its checksum (overwritten or damaged)"
            _VERIFIED.add(memo)
    return None


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _acquire(lock_path: Path, key: str, progress):
    """An open lock file held exclusively (waiting for another process if needed)."""
    timeout = float(os.environ.get("ZPRUNE_LOCK_TIMEOUT") or "inf")
    started, waiting = time.monotonic(), None
    try:
        while True:
            handle = open(lock_path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                if waiting is None:
                    holder = _holder(lock_path)
                    log.info("statistics entry %s is being written by %s; waiting for it", key, holder)
                    waiting = progress.task(f"Waiting for {holder}", None) if progress is not None else None
                    if waiting is not None:
                        waiting.__enter__()
                if time.monotonic() - started > timeout:
                    raise ZpruneError(f"statistics entry {key} is still locked by {_holder(lock_path)} after "
                                      f"{timeout:g} s (ZPRUNE_LOCK_TIMEOUT); try again later") from None
                time.sleep(0.2)
                continue
            try:  # `cache gc` may have removed an unheld lock file between our open and flock
                if os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()
    finally:
        if waiting is not None:
            waiting.__exit__(None, None, None)


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
        return f"process {info['pid']} ({info.get('command', '?')}, since {info.get('since', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _command() -> list[str]:
    import sys

    return [Path(sys.argv[0]).name, *sys.argv[1:3]] if sys.argv else ["python"]


def _lock_held(lock: Path) -> bool:
    try:
        with open(lock, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


# The lock protocol: a lock file is unlinked only by a process holding its flock, and whoever takes the
# flock checks that the path still names the file it locked (`_acquire`), else opens it anew. So a
# waiter on a file just removed never writes beside the next holder, and no live holder loses its file.
def _release(lock_path: Path, handle) -> None:
    """Remove our lock file, then let go of it: a finished, failed or interrupted run leaves nothing."""
    try:
        lock_path.unlink()
    except FileNotFoundError:
        pass
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def remove_unheld_lock(lock: Path) -> bool:
    """Remove a lock file no process holds (its holder was SIGKILLed: the kernel let go of the flock,
    the file stayed). Taken with the lock's own flock first: a lock a live process holds stays."""
    try:
        handle = open(lock, "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (BlockingIOError), or not lockable here
            return False
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                lock.unlink()
                return True
        except FileNotFoundError:
            pass
        return False


def _writer_alive(tmp: Path) -> bool:
    pid = tmp.name.rsplit("-", 1)[-1]
    return pid.isdigit() and pid_alive(int(pid))


# An optional entry is not written where it would take more than this share of its disk's free space, which the
# output and everything else on the disk need too: at Llama-2-7B's shape a SparseGPT run's propagated statistics
# are 22 GB of Gram matrices (43 GB at 13B), beside a 13 GB output. (A share of the disk's total refused a few KB
# on a large disk that was 91% full with 22 GB free.)
OPTIONAL_SHARE_OF_FREE = 0.5


class EntryWriter:
    def __init__(self, path: Path, key: StatsKey | PropagatedKey, settings: dict, optional: bool = False):
        self.path = path
        self.key = key
        self.settings = settings
        self.blocks: list[BlockRecord] = []
        self.optional = optional
        self.dropped = False  # an optional entry given up for want of disk space: nothing more is written

    def _drop_unless_room(self, block_bytes: int) -> None:
        """Give up an optional entry when the blocks left, each about this block's size, would take more than
        OPTIONAL_SHARE_OF_FREE of the disk's free space (said once; the run goes on without caching)."""
        left = max(1, int(self.settings.get("n_blocks") or 1) - len(self.blocks))
        usage = shutil.disk_usage(self.path)
        if left * block_bytes <= OPTIONAL_SHARE_OF_FREE * usage.free:
            return
        self.dropped = True
        for file in self.path.iterdir():
            file.unlink()
        log.warning(f"not caching this run's propagated statistics: about {left * block_bytes / 2**30:.1f} GiB more would "
                    f"take more than {OPTIONAL_SHARE_OF_FREE:.0%} of the {usage.free / 2**30:.1f} GiB free in {self.path.parent}; the prune goes on, and a later run with this recipe collects them again")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """An I/O failure of this entry's own writes (a full disk under safetensors is its own error type) in one line
        naming the cache; what the caller writes inside `with store.writer(...)` (a streamed model) is not ours."""
        try:
            yield
        except Exception as exc:
            io_error = os_error_of(exc)
            if io_error is None:
                raise
            raise ZpruneError(f"writing statistics to {self.path.parent.parent} failed: {translate(io_error)}") from None

    def write_inputs(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> None:
        with self._writing():
            safetensors_torch.save_file({"input_ids": input_ids.contiguous().cpu(), "hidden": hidden.contiguous().cpu()},
                      self.path / "inputs.safetensors")

    def write_block(self, index: int, groups: list[InputGroup]) -> None:
        if self.optional and not self.dropped:
            self._drop_unless_room(sum(g.sumsq.nbytes + g.sum.nbytes + (g.gram.nbytes if g.gram is not None else 0)
                                       for g in groups))
        if self.dropped:
            return
        tensors = {}
        for group in groups:
            tensors[f"{group.name}.sumsq"] = group.sumsq.contiguous().cpu()
            tensors[f"{group.name}.sum"] = group.sum.contiguous().cpu()
            if group.gram is not None:
                tensors[f"{group.name}.gram"] = group.gram.contiguous().cpu()
        fname = f"block_{index:03d}.safetensors"
        with self._writing():
            safetensors_torch.save_file(tensors, self.path / fname)
        self.blocks.append(BlockRecord(index, fname, [GroupRecord(g.members, g.n_tokens, g.n_sequences, int(g.sumsq.numel()))
                                                      for g in groups]))

    def finish(self) -> None:
        files = {f.name: {"size": f.stat().st_size, "sha256": sha256_of(f)} for f in self.path.iterdir() if f.is_file()}
        key_fields = asdict(self.key) if isinstance(self.key, StatsKey) else {"base": self.key.base, "run": self.key.run}
        manifest = StatsManifest(format=FORMAT_VERSION, key=self.key.digest, key_fields=key_fields, settings=self.settings,
                                 created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), blocks=self.blocks, files=files)
        tmp = self.path / (MANIFEST + ".part")
        with self._writing():
            tmp.write_text(json.dumps(manifest.to_json(), indent=1))
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.rename(tmp, self.path / MANIFEST)
