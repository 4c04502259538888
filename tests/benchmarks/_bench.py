"""What every benchmark script shares: offline settings, where the data is, which library version ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ZPRUNE_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[2]


def _data_dir() -> Path:
    """The data the benchmarks read: $ZPRUNE_DATA_DIR or $ZPRUNE_TEST_DATA, else ../shared/data beside the
    repo, else the openly licensed slice shipped in tests/data (enough for the cells a test re-runs; the
    published numbers name the full files)."""
    for candidate in (os.environ.get("ZPRUNE_DATA_DIR"), os.environ.get("ZPRUNE_TEST_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return REPO / "tests" / "data"


DATA_DIR = _data_dir()
# The C4 shard's first documents: 800 in the full data folder, 100 in the shipped slice.
C4 = min((DATA_DIR / "c4").glob("c4-train.00000-of-01024.docs0-*.jsonl"), default=DATA_DIR / "c4" / "missing.jsonl")


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


def fidelity_arguments(p, reference_help: str) -> None:
    """The fidelity protocol's arguments (SmolLM2, C4 32 x 512, 40 wikitext-2 windows) and the reference checkout."""
    p.add_argument("--reference", type=Path, required=True, help=reference_help)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(C4))
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--out", type=Path, default=None, help="JSON-lines file of finished cells")


def record(row: dict, out: Path | None) -> None:
    """A finished fidelity cell: printed as JSON, and appended to `out` (JSON lines) when given."""
    print(json.dumps(row), flush=True)
    if out:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def sides_table(rows: list[dict], key: str, heading: str) -> str:
    """Perplexity per cell (`key`) and side, each side's ratio to the "reference" side."""
    sides = list(dict.fromkeys(r["side"] for r in rows))
    lines = [f"| {heading} | {' | '.join(sides)} | / reference |", "|---|" + "---:|" * (len(sides) + 1)]
    for cell in dict.fromkeys(r[key] for r in rows):
        ppl = {r["side"]: r["ppl"] for r in rows if r[key] == cell}
        ratios = ", ".join(f"{s} {ppl[s] / ppl['reference']:.4f}" for s in sides if s != "reference" and s in ppl and "reference" in ppl)
        lines.append(f"| {cell} | {' | '.join(f'{ppl[s]:.2f}' if s in ppl else '-' for s in sides)} | {ratios or '-'} |")
    return "\n".join(lines)


sys.path.insert(0, str(REPO / "tests"))
from peak_memory import HWM, RUN_ZPRUNE  # noqa: E402,F401  (shared with the peak-memory tests)
