"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zprune_cli.calibration import DEFAULT_DATA, DEFAULT_NSAMPLES, DEFAULT_SEED, DEFAULT_SEQLEN
from zprune_cli.models.resolve import DEFAULT_MODEL

Model = Annotated[str, typer.Argument(help="Hub id (org/name), local HF folder, .gguf file, or alias smollm2-135m / gemma3-270m.")]
ModelDefault = Annotated[str, typer.Argument(help="Hub id, local folder, .gguf file or alias.")]
Revision = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run model code from the hub (off by default).")]
Data = Annotated[str, typer.Option("--data", help="Calibration text: c4, wikitext2, ptb, self (sampled from the model), or a .txt/.jsonl/.parquet file.")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder searched for local copies of named datasets [env: ZPRUNE_DATA_DIR].")]
NSamples = Annotated[int, typer.Option("--nsamples", "-n", help="Calibration windows.")]
Seqlen = Annotated[int, typer.Option("--seqlen", "-l", help="Tokens per calibration window.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for drawing calibration windows.")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder [env: ZPRUNE_HOME; default $XDG_CACHE_HOME/zprune].")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto (cuda if available), cpu, cuda, cuda:N.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr; no progress bars.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]

DEFAULTS = {"data": DEFAULT_DATA, "nsamples": DEFAULT_NSAMPLES, "seqlen": DEFAULT_SEQLEN, "seed": DEFAULT_SEED, "model": DEFAULT_MODEL}
