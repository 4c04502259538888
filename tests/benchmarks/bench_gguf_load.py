"""Benchmark: loading the embedded default model (SmolLM2-135M, GGUF), with the tensor-name table built once per
load (zprune_cli/models/gguf_metadata.py) and, side by side in the same process, rebuilt per submodule as
transformers alone does. CPU seconds of each load, alternating, after one warm-up load of each.

    python tests/benchmarks/bench_gguf_load.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import time
import types

from _bench import library_state  # noqa: F401  (sets the offline environment first)

from zprune_cli.models import gguf_metadata
from zprune_cli.models.handle import ModelHandle

CACHED = gguf_metadata.functools
UNCACHED = types.SimpleNamespace(lru_cache=lambda **_: (lambda function: function))  # transformers' own behaviour


def load_seconds(cached: bool) -> float:
    gguf_metadata.functools = CACHED if cached else UNCACHED
    started = time.process_time()
    model = ModelHandle("smollm2-135m", "cpu", "float32").model
    seconds = time.process_time() - started
    del model
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    print(f"{library_state()}; load average {os.getloadavg()[0]:.1f}; CPU seconds of a SmolLM2-135M load (float32)")
    load_seconds(True), load_seconds(False)  # warm-up: the header's metadata is parsed once per process
    for rep in range(1, args.reps + 1):
        once, per_module = load_seconds(True), load_seconds(False)
        print(f"rep {rep}: table once {once:.2f} s, per submodule {per_module:.2f} s, ratio {per_module / once:.2f}x "
              f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
