"""The library's own exceptions; the CLI turns each into one line and an exit code."""

import errno


class ZpruneError(Exception):
    """A run failed for a reason the user can act on. The CLI prints the message and exits 1."""

    exit_code = 1


class ZpruneUsageError(ZpruneError):
    """The arguments do not fit together (bad value, unknown name). The CLI exits 2."""

    exit_code = 2


class NotImplementedYet(ZpruneError):
    """A command whose issue has not landed yet."""


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
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        if exc.errno == errno.ENOSPC:
            return ZpruneError(f"the disk is full{where}; free space or point --cache-dir / --out elsewhere")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return ZpruneError(f"permission denied{where}; choose a writable --cache-dir / --out")
        return ZpruneError(f"{exc.strerror or text}{where}")
    if name == "SafetensorError":
        return ZpruneError(f"a safetensors file is damaged or truncated: {text}; remove it (for statistics: zprune cache gc)")
    if name in ("OperationalError", "DatabaseError", "IntegrityError") and type(exc).__module__ == "sqlite3":
        return ZpruneError(f"the results database failed: {text}; another process may hold it, or it is damaged")
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return ZpruneError(f"out of device memory ({text}); lower --nsamples or --batch-size, or use --dtype bfloat16")
    if isinstance(exc, MemoryError):
        return ZpruneError("out of host memory; lower --nsamples, --seqlen or --batch-size")
    return ZpruneError(f"internal error: {name}: {text} ({DEBUG_HINT})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): what a one-line error shows."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
