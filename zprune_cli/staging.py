"""Publishing a folder atomically: write into a hidden temporary folder beside it, rename when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zprune_cli.errors import ZpruneError, ZpruneUsageError

_TMP_MARK = ".zprune-tmp-"


@contextmanager
def staged_folder(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder next to `dest`; on success it replaces `dest` by rename.

    On any error or Ctrl-C the temporary folder is removed and `dest` is left as it was.
    """
    parent = dest.parent
    tmp = parent / f".{dest.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise ZpruneError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if dest.exists():
            if not overwrite:  # appeared while we were writing
                raise ZpruneUsageError(f"destination {dest} exists; pass --overwrite to replace it")
            old = parent / f".{dest.name}{_TMP_MARK}old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZpruneError(f"writing {dest} failed: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
