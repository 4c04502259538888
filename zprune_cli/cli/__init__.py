"""The `zprune` entry point: signal handling first, then the (heavy) imports, then the app.

Ctrl-C or SIGTERM at any moment from the first line of `main()` ends with one line on stderr and exit
130 / 143 (or the command's own code when it had already finished); cleanup (temporary folders, locks)
runs in the `finally` blocks on the way out. Importing this package installs nothing: only `main()` does.

What no Python code can cover: the interpreter's own start-up (site, .pth files, the console script's
first imports) before `main()` runs, a few tens of milliseconds, longer on a loaded machine. A signal
then gets Python's defaults (a KeyboardInterrupt traceback, or death by SIGTERM). While torch is imported
the two signals wait (blocked) until the import ends: see _SignalsWaitDuringImport.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


class Interrupted(KeyboardInterrupt):
    """SIGINT. A subclass, not KeyboardInterrupt itself: CPython remembers a plain KeyboardInterrupt that
    escaped any exec()/eval() of a string (dataclasses and namedtuples build their methods so, all
    through the imports) and then ends the process by SIGINT (-2) even when the exception was caught
    and the program exits 130. It checks the exact type, so a subclass leaves no such mark."""


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every `finally` and staging cleanup runs."""


_received: list[int] = []  # signals seen, kept even when a library's bare `except:` swallows the exception
_reported: list[str] = []  # the interrupt's line is printed once per process
_finished = False  # set when the command's outcome is known: later signals change nothing


def _on_signal(signum, frame):
    _received.append(signum)
    if _finished:
        return
    raise Terminated() if signum == signal.SIGTERM else Interrupted()


def swallowed_signal() -> tuple[int, str] | None:
    """(exit code, word) for a Ctrl-C / SIGTERM already received, or None. A library that swallows the
    exception in a bare `except:` (some optional imports do) makes a later step fail for no reason of its
    own ("cannot load module more than once per process"); that failure is the interrupt, not a bug."""
    if not _received:
        return None
    return (143, "terminated") if signal.SIGTERM in _received else (130, "interrupted")


def interrupted(word: str, say=None) -> int:
    """Print the interrupt's one line (`say`, default plain stderr) and return its exit code."""
    (say or _say)(f"{word}; nothing half-written was kept")
    _reported.append(word)  # after: a second Ctrl-C during the print leaves the line to `main`
    return 143 if word == "terminated" else 130


def _say(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _unraisable(info, default=sys.unraisablehook) -> None:
    """Our exception raised where Python cannot raise (a weakref callback or `__del__` during an import)
    is printed as 'Exception ignored' and lost: deliver the signal again, silently, a moment later in
    ordinary code. The OSError 'Signal N ignored due to race condition' of a signal that arrived while
    the handlers were being switched off at the very end says nothing either."""
    if isinstance(info.exc_value, (Interrupted, Terminated)):
        _deliver_again(info.exc_value)
        return
    if _finished and isinstance(info.exc_value, OSError) and "race condition" in str(info.exc_value):
        return
    default(info)


class _SignalsWaitDuringImport:
    """A meta path finder for torch and its submodules: their import (the extension's init, the operator
    registrations) runs Python called from C++ through pybind11, where our exception cannot unwind; raised
    there, it aborts the process ('terminate called after throwing pybind11::error_already_set', SIGABRT,
    seen once in the test of a SIGTERM at start-up). SIGINT and SIGTERM stay blocked while such a module is
    created and run; one that arrived meanwhile is delivered right after, in ordinary code. A second or two
    of delay, once."""

    PACKAGES = ("torch",)

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] not in self.PACKAGES:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _BlockingLoader(spec.loader)
        return spec


class _BlockingLoader:
    """`loader` with SIGINT and SIGTERM blocked in create_module and exec_module; everything else is its own."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        with _signals_blocked():
            return self._loader.create_module(spec)

    def exec_module(self, module):
        with _signals_blocked():
            self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


@contextlib.contextmanager
def _signals_blocked():
    """SIGINT and SIGTERM blocked in this thread (threads started meanwhile inherit the mask, so the signal comes
    to this one), then the mask that was there put back: nested imports restore it, the outermost unblocks."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a signal that waited is handled in this call
        except (Interrupted, Terminated) as exc:  # raised here it would undo the finished import: a moment later
            _deliver_again(exc)


def _deliver_again(exc: BaseException) -> None:
    """The signal behind `exc` sent again to the main thread 10 ms from now, as the first was (a real signal
    also wakes a blocking call: sleep, read), to be raised in ordinary code."""
    import threading

    signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signum)).start()


def _install() -> None:
    sys.unraisablehook = _unraisable
    sys.meta_path.insert(0, _SignalsWaitDuringImport())
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)  # last: a caught SIGTERM means both are in place (the tests look)


def _finish() -> None:
    """From here on the exit code is decided. Ignored, not caught: after the interpreter tears down its
    own handlers (late in the shutdown) a caught signal would fall back to its default and kill us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _outcome() -> tuple[object, str | None]:
    """The app's exit code, and "interrupted" / "terminated" when a signal ended it. `_finished` is set
    first thing in each branch: a signal is checked only between some bytecodes (calls, loops), never
    before that first store, so none can escape from the handling of another."""
    global _finished
    try:
        from zprune_cli.cli.app import app

        app(standalone_mode=True)
        _finished = True
        return 0, None
    except SystemExit as exc:
        _finished = True
        return exc.code, None
    except KeyboardInterrupt:
        _finished = True
        return 130, "interrupted"
    except Terminated:
        _finished = True
        return 143, "terminated"
    except BaseException as exc:  # pragma: no cover  (the group's map catches everything during a command)
        _finished = True
        if _received:
            return 1, None
        if os.environ.get("ZPRUNE_DEBUG"):
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (ZPRUNE_DEBUG=1 shows the traceback)")
        return 1, None


def main() -> None:
    _install()
    code, word = _outcome()
    _finish()
    if code not in (0, None) and (swallowed := swallowed_signal()):
        word = swallowed[1]  # also a signal in click's parsing, where typer exits 130 with no word
    if word:
        code = 143 if word == "terminated" else 130
        if not _reported:
            interrupted(word)
    sys.exit(code)
