"""One quick look at the Hugging Face hub before asking it for anything: offline, fail in a second with
one line, instead of the hub client's five retries (about 25 s of warnings)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from zprune_cli.errors import ZpruneError

_OFFLINE = ("1", "true", "yes", "on")


def offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE for data): the local hub cache only, no request."""
    return any(os.environ.get(v, "").lower() in _OFFLINE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_reachable(what: str, fix: str) -> None:
    """Raise ZpruneError naming `what` and `fix` unless the hub endpoint accepts a connection (5 s)."""
    if offline():
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as exc:
        raise ZpruneError(f"{what} is on the Hugging Face hub, which cannot be reached ({exc.strerror or exc}); {fix}") from None
