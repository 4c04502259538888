"""The library's own exceptions; the CLI turns each into one line and an exit code."""

import errno
import os
import re


class ZpruneError(Exception):
    """A run failed for a reason the user can act on. The CLI prints the message and exits 1."""

    exit_code = 1


class ZpruneUsageError(ZpruneError):
    """The arguments do not fit together (bad value, unknown name). The CLI exits 2."""

    exit_code = 2


DEBUG_HINT = "ZPRUNE_DEBUG=1 shows the traceback"


def translate(exc: BaseException) -> ZpruneError:
    """The one exception map: anything raised under a command, as zprune's own error with one line.

    zprune's errors pass through; I/O failures name the file and the fix; anything else is an internal
    error that names ZPRUNE_DEBUG. Library code raises ZpruneError where it knows more (the layer, the
    entry); this is the net under it.
    """
    if isinstance(exc, ZpruneError):
        return exc
    name = type(exc).__name__
    text = first_line(exc)
    io_error = os_error_of(exc)
    if io_error is not None:
        where = f" ({io_error.filename})" if getattr(io_error, "filename", None) else ""
        if io_error.errno == errno.ENOSPC:
            return ZpruneError(f"the disk is full{where}; free space or point --cache-dir / --out elsewhere")
        if io_error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return ZpruneError(f"permission denied{where}; choose a writable --cache-dir / --out")
        return ZpruneError(f"{io_error.strerror or text}{where}")
    if name == "SafetensorError":
        return ZpruneError(f"a safetensors file is damaged or truncated: {text}; remove it (for statistics: zprune cache gc)")
    if name in ("OperationalError", "DatabaseError", "IntegrityError") and type(exc).__module__ == "sqlite3":
        return ZpruneError(f"the results database failed: {text}; another process may hold it, or it is damaged")
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return ZpruneError(f"out of device memory ({text}); lower --nsamples or --batch-size, or use --dtype bfloat16")
    if isinstance(exc, MemoryError):
        return ZpruneError("out of host memory; lower --nsamples, --seqlen or --batch-size")
    return ZpruneError(f"internal error: {name}: {text} ({DEBUG_HINT})")


# safetensors' Rust code reports an I/O failure only in its message: "I/O error: No space left on device (os
# error 28)" as 0.8 prints it, "IoError(Os { code: 28, kind: StorageFull, ... })" in the Debug form of older releases.
_ERRNO_IN_MESSAGE = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The operating-system error behind `exc`: itself, or the one a SafetensorError carries in its message
    (a full disk under save_file is a SafetensorError, not an OSError); None for anything else."""
    if isinstance(exc, OSError):
        return exc
    if type(exc).__name__ != "SafetensorError":
        return None
    found = _ERRNO_IN_MESSAGE.search(str(exc))
    if found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): what a one-line error shows."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
