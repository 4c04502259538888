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


_received: list[int] = []  # signals seen, kept even when a library's bare `except:` swallows the exception


def _terminate(signum, frame):
    _received.append(signum)
    raise Terminated()


def _interrupt(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt()


def swallowed_signal() -> tuple[int, str] | None:
    """(exit code, word) for a Ctrl-C / SIGTERM already received, or None. A library that swallows the
    exception in a bare `except:` (some optional imports do) makes a later step fail for no reason of its
    own ("cannot load module more than once per process"); that failure is the interrupt, not a bug."""
    if not _received:
        return None
    return (143, "terminated") if signal.SIGTERM in _received else (130, "interrupted")


def _say(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _interrupt)
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
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finished: a late Ctrl-C must not turn the exit code into -2
        raise
    except BaseException as exc:  # pragma: no cover  (the group's map catches everything during a command)
        if swallowed := swallowed_signal():
            _say(f"{swallowed[1]}; nothing half-written was kept")
            sys.exit(swallowed[0])
        if os.environ.get("ZPRUNE_DEBUG"):
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (ZPRUNE_DEBUG=1 shows the traceback)")
        sys.exit(1)
