"""Settings: built-in defaults < zprune.toml or [tool.zprune] in pyproject.toml < ZPRUNE_* env < flags."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from zprune_cli.errors import ZpruneUsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_toml_config(start: Path | None = None) -> dict[str, Any]:
    """The nearest zprune.toml (whole file) or pyproject.toml's [tool.zprune], from `start` upwards."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        own = folder / "zprune.toml"
        if own.is_file():
            return _read(own)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            section = _read(pyproject).get("tool", {}).get("zprune")
            if section is not None:
                return section
    return {}


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZpruneUsageError(f"cannot read config {path}: {exc}") from None


def cache_dir(flag: str | Path | None = None, config: dict | None = None) -> Path:
    """--cache-dir, else $ZPRUNE_HOME, else the config's cache_dir, else $XDG_CACHE_HOME/zprune."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get("ZPRUNE_HOME"):
        return Path(os.environ["ZPRUNE_HOME"]).expanduser()
    config = load_toml_config() if config is None else config
    if config.get("cache_dir"):
        return Path(config["cache_dir"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "zprune"


def data_dir(flag: str | Path | None = None, config: dict | None = None) -> Path | None:
    """--data-dir, else $ZPRUNE_DATA_DIR, else the config's data_dir: where local dataset copies live."""
    if flag:
        return Path(flag).expanduser().resolve()
    if os.environ.get("ZPRUNE_DATA_DIR"):
        return Path(os.environ["ZPRUNE_DATA_DIR"]).expanduser().resolve()
    config = load_toml_config() if config is None else config
    return Path(config["data_dir"]).expanduser().resolve() if config.get("data_dir") else None
