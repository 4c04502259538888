"""The `zprune` entry point: signal handling first, then the (heavy) imports, then the app.

Ctrl-C or SIGTERM at any moment, even while torch is still importing, ends with one line and exit
130 / 143; cleanup (temporary folders, locks) runs in the `finally` blocks on the way out.
"""

from __future__ import annotations

import os
import signal
import sys


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every `finally` and staging cleanup runs."""


def _terminate(signum, frame):
    raise Terminated()


def _say(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from zprune_cli.cli.app import app

        app(standalone_mode=True)
    except KeyboardInterrupt:
        _say("interrupted; nothing half-written was kept")
        sys.exit(130)
    except Terminated:
        _say("terminated; nothing half-written was kept")
        sys.exit(143)
    except SystemExit:
        raise
    except BaseException as exc:  # pragma: no cover  (the group's map catches everything during a command)
        if os.environ.get("ZPRUNE_DEBUG"):
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (ZPRUNE_DEBUG=1 shows the traceback)")
        sys.exit(1)
