"""Publishing a folder or a file atomically: write into a hidden temporary one beside it, rename when complete."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError, os_error_of, translate

_TMP_MARK = ".zprune-tmp-"  # .<name>.zprune-tmp-<pid>-<random>: the writer's pid, to sweep dead ones


@contextmanager
def staged_folder(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder next to `dest`; on success it replaces `dest` by rename.

    On any error, Ctrl-C or SIGTERM the temporary folder is removed and `dest` is left as it was; what a
    SIGKILLed writer left beside `dest` is swept by the next write to the same place.
    """
    parent = dest.parent
    tmp = parent / f".{dest.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep(parent, dest.name)
        tmp.mkdir()
    except OSError as exc:
        raise ZpruneError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        publish_folder(tmp, dest, overwrite)
    except BaseException as exc:
        _remove(tmp)
        io_error = os_error_of(exc)  # safetensors reports a full disk as its own error, not an OSError
        if io_error is None:
            raise
        raise ZpruneError(f"writing {dest} failed: {translate(io_error)}") from None


def write_file_atomically(dest: Path, data: bytes) -> None:
    """`replace_atomically`, an I/O error said in one line naming `dest`."""
    try:
        replace_atomically(dest, data)
    except OSError as exc:
        raise ZpruneError(f"cannot write {dest}: {exc.strerror or exc}") from None


def replace_atomically(dest: Path, data: bytes) -> None:
    """Write `dest` through a temporary file beside it, renamed over it when complete: a reader sees the
    old file or the new one, never half of one, and a failure leaves no temporary file behind (the
    OSError goes on to a caller that handles it: a read-only model folder only warns)."""
    tmp = _temporary_name(dest)
    try:
        sweep(dest.parent, dest.name)
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except BaseException:  # an I/O error, Ctrl-C or SIGTERM: the temporary file goes too
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def temporary_beside(dest: Path) -> Path:
    """A fresh temporary path beside `dest`, tagged with this process's pid, after sweeping those of dead
    writers: for a writer that renames it over `dest` itself (and lets its own OSError through)."""
    sweep(dest.parent, dest.name)
    return _temporary_name(dest)


def _temporary_name(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish_folder(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Rename the complete folder `tmp` to `dest`; an existing `dest` is replaced only with `overwrite`."""
    if not (dest.exists() or dest.is_symlink()):
        os.replace(tmp, dest)
        return
    if not overwrite:  # appeared while we were writing
        raise ZpruneUsageError(f"destination {dest} exists; pass --overwrite to replace it")
    old = dest.parent / f".{dest.name}{_TMP_MARK}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
    os.replace(dest, old)
    os.replace(tmp, dest)
    _remove(old)


def _remove(path: Path) -> None:
    """A folder, a file or a link, whichever it is (an old `--out FILE` replaced with --overwrite)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def sweep(parent: Path, name: str | None = None) -> list[Path]:
    """Remove staging folders beside `dest` (all names when None) whose writer process is dead."""
    pattern = re.compile(rf"^\.{re.escape(name) if name else '.+'}{re.escape(_TMP_MARK)}(\d+)-")
    removed = []
    for path in parent.iterdir() if parent.is_dir() else []:
        match = pattern.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            _remove(path)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def readable_mode() -> int:
    """The mode a new file gets under the umask (0644 usually): safetensors writes 0600, we chmod to this."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
