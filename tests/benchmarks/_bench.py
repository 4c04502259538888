"""What every benchmark script shares: offline settings, where the data is, which library version ran."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ZPRUNE_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("ZPRUNE_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
C4 = DATA_DIR / "c4" / "c4-train.00000-of-01024.docs0-799.jsonl"


def library_state() -> str:
    """The commit the library is at, and whether its files differ from it (numbers belong to a version)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "zprune_cli"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "zprune_cli (not a git checkout)"
    return f"zprune_cli at {head}{' + local changes' if dirty else ''}"


# Each process reports its own high-water mark (VmHWM, per address space, so it starts afresh at exec); not
# getrusage's ru_maxrss, which Linux carries over exec from the forking parent.
HWM = """
import atexit, os, sys
def _hwm():
    with open('/proc/self/status') as status, open(os.environ['HWM_FILE'], 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM')))
atexit.register(_hwm)
"""
RUN_ZPRUNE = HWM + "import runpy; sys.argv = ['zprune', *sys.argv[1:]]; runpy.run_module('zprune_cli', run_name='__main__')"
