"""One quick look at the Hugging Face hub before asking it for anything: offline, fail in a second with
one line, instead of the hub client's five retries (about 25 s of warnings).

Every command that names a hub model meets this check at the same point (`models.handle.ModelHandle`,
when the spec is resolved), so `prune`, `calibrate` and `--dry-run` give the same line as quickly; the
loaders check again (a library caller may skip the handle), which costs nothing once the hub answered.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

from zprune_cli.base.errors import ZpruneError

_OFFLINE = ("1", "true", "yes", "on")
_REACHED: set[tuple[str, int]] = set()  # endpoints that accepted a connection in this process


def offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE for data): the local hub cache only, no request."""
    return any(os.environ.get(v, "").lower() in _OFFLINE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_reachable(what: str, fix: str) -> None:
    """Raise ZpruneError naming `what` and `fix` unless the hub endpoint accepts a connection (5 s)."""
    if offline():
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    address = (endpoint.hostname or "", endpoint.port or (80 if endpoint.scheme == "http" else 443))
    if address in _REACHED:
        return
    try:
        socket.create_connection(address, timeout=5).close()
    except OSError as exc:
        raise ZpruneError(f"{what} is on the Hugging Face hub, which cannot be reached ({exc.strerror or exc}); {fix}") from None
    _REACHED.add(address)


def in_cache(repo_id: str, revision: str | None, filename: str = "config.json") -> bool:
    """Whether the local hub cache holds `filename` of `repo_id` at `revision` (what HF_HUB_OFFLINE can use)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)


def quiet_hub_logging() -> None:
    """The hub client's per-request warnings ("... thrown while requesting HEAD ...", "Retrying in 2s [Retry
    2/5]") and httpx's request lines say nothing our one-line errors do not: errors only."""
    for name in ("huggingface_hub", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.ERROR)
