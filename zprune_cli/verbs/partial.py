"""A prune written block by block (`prune --offload disk --out`) that outlives its process.

An offloaded prune of a 13B model runs for hours, and a Ctrl-C, a SIGTERM from a scheduler, a full disk or a
preempted machine used to throw every finished block away. Its output is staged instead in a fixed hidden folder
beside `--out` (`.<name>.zprune-partial`), and after each finished block (its shard written) a record of where
the run stands goes beside the shards: the blocks done, the next block's inputs when the recipe propagates
pruned outputs, and what the report has gathered so far (sparsity counts, layer errors, quantization grids,
channel-permutation layouts). The same command then resumes at the next block, and its output equals an
uninterrupted run's bit for bit. The record names the job (base model, recipe, statistics, output dtype and
zprune's own code): a partial output of any other job is discarded, never mixed in. On success the folder is
renamed to `--out`, as `base.staging.staged_folder` does; one process at a time writes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.lazy import lazy
from zprune_cli.base.staging import pid_alive, publish_folder, replace_atomically
from zprune_cli.engine.resume import ResumePoint

torch = lazy("torch")

log = logging.getLogger("zprune")

MARK = ".zprune-partial"
RECORD = ".zprune-resume.json"  # hidden, with the tensors file: removed before the folder becomes --out
TENSORS = ".zprune-resume.safetensors"
LOCK = ".zprune-writer"


def partial_folder(out: Path) -> Path:
    return out.parent / f".{out.name}{MARK}"


def staged_bytes(out: Path) -> int:
    """What a stopped run's partial output beside `out` holds on the disk (0 when there is none)."""
    folder = partial_folder(Path(out).expanduser())
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0


def code_digest() -> str:
    """zprune's own source: a partial output from other code would not equal this code's whole run."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class PartialOutput:
    """The staging folder of one job's output, kept across processes until the job is done."""

    def __init__(self, out: Path, job: dict):
        self.out = Path(out)
        self.folder = partial_folder(self.out)
        self.job = hashlib.sha256(json.dumps({**job, "code": code_digest()}, sort_keys=True).encode()).hexdigest()[:24]

    def open(self) -> ResumePoint:
        """Take the folder (refused while another live process writes it) and return where the job stands:
        the recorded point of this job's partial output, or a fresh start (anything else there removed)."""
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            self.folder.mkdir(exist_ok=True)
            self._lock()
            point = self._recorded()
            if point is None:
                self._clear()
            return point or ResumePoint()
        except OSError as exc:
            raise ZpruneError(f"cannot write to {self.folder.parent}: {exc.strerror or exc}") from None

    def record(self, point: ResumePoint) -> None:
        """After a finished block's shard is written: its tensors, then the record that names them (a kill
        between the two leaves the previous record, whose blocks are all still there)."""
        from safetensors.torch import save_file

        tensors = point.tensors()
        staging = self.folder / f"{TENSORS}.new"
        save_file(tensors, str(staging))
        os.replace(staging, self.folder / TENSORS)
        replace_atomically(self.folder / RECORD, json.dumps(point.as_json(self.job)).encode())

    def publish(self, overwrite: bool) -> None:
        """The finished output becomes `out` (an existing one replaced only with `overwrite`)."""
        for name in (RECORD, TENSORS, f"{TENSORS}.new", LOCK):  # .new: a record a full disk stopped
            (self.folder / name).unlink(missing_ok=True)
        publish_folder(self.folder, self.out, overwrite)

    def release(self, kept: bool) -> None:
        """After a failure: keep the finished blocks for the next run of the same command, or remove them all."""
        if kept:
            (self.folder / LOCK).unlink(missing_ok=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _lock(self) -> None:
        """Create the lock file with this pid, exclusively; a dead writer's lock is taken over."""
        lock = self.folder / LOCK
        for _attempt in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(lock.read_text())
                except (OSError, ValueError):
                    owner = None  # being written, or torn by a kill: a live writer rewrites it at once
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    break
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return
        owner = lock.read_text().strip() if lock.is_file() else "?"
        raise ZpruneUsageError(f"another zprune (pid {owner}) is writing {self.out}; wait for it or stop it")

    def _recorded(self) -> ResumePoint | None:
        """This job's recorded point, or None (no record, another job's, or one that cannot be read)."""
        from safetensors.torch import load_file

        try:
            record = json.loads((self.folder / RECORD).read_text())
            if record.get("job") != self.job:
                log.warning(f"an unfinished prune of another job was left at {self.folder}; starting over")
                return None
            tensors = load_file(str(self.folder / TENSORS)) if (self.folder / TENSORS).is_file() else {}
            point = ResumePoint.of(record, tensors)
            missing = sorted({shard for shard in point.saved.get("weight_map", {}).values()
                              if not (self.folder / shard).is_file()})
            if missing:
                log.warning(f"the unfinished prune left at {self.folder} lacks {', '.join(missing[:3])}; starting over")
                return None
            return point
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(f"the unfinished prune left at {self.folder} cannot be read ({exc}); starting over")
            return None

    def _clear(self) -> None:
        for path in self.folder.iterdir():
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
