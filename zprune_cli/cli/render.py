"""Small rendering helpers shared by commands."""

from __future__ import annotations

from zprune_cli.base.machine import human_bytes  # noqa: F401  (the library's messages use it too)
