"""Regenerate the shell completion scripts in this folder from the app: python completions/generate.py

tests/test_completions.py fails when the committed files differ from what `zprune completions SHELL` prints.
"""

from __future__ import annotations

from pathlib import Path

from zprune_cli.cli.completions_cmd import FILE_NAMES, completion_script

HERE = Path(__file__).resolve().parent


def main() -> None:
    for shell, name in FILE_NAMES.items():
        path = HERE / name
        path.write_text(completion_script(shell), encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
