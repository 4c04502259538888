"""The entry point's signal handling, each window found on a loaded machine reproduced on purpose: a real
`python -m` process whose app is replaced by a few lines that send the signal at the bad moment.
(tests/test_kills.py sends real signals at many delays to the real command.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, signal, sys, types
import zprune_cli.cli as entry

def app(standalone_mode):
{body}

sys.modules["zprune_cli.cli.app"] = types.SimpleNamespace(app=app)
sys.argv = ["zprune"]
entry.main()
"""


def run_entry(tmp_path, body: str) -> subprocess.CompletedProcess:
    # `python -m`, as the CLI runs: CPython decides there whether to end the process by SIGINT
    (tmp_path / "fake_zprune.py").write_text(PRELUDE.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    return subprocess.run([sys.executable, "-m", "fake_zprune"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


INTERRUPTED = ["error: interrupted; nothing half-written was kept"]


def test_ctrl_c_inside_an_exec_exits_130_not_by_sigint(tmp_path):
    # dataclasses and namedtuples exec() strings all through torch's and transformers' imports; a plain
    # KeyboardInterrupt raised in one left CPython's mark and the process died by SIGINT (-2)
    done = run_entry(tmp_path, """
        exec("os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(3): pass")
        print("finished")
    """)
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (130, INTERRUPTED, "")


def test_ctrl_c_inside_a_weakref_callback_is_delivered_again(tmp_path):
    # importlib's module-lock callbacks run Python code where an exception is only printed ("Exception
    # ignored in ...") and dropped: the command ran on as if Ctrl-C had not been pressed
    done = run_entry(tmp_path, """
        import time, weakref

        class Lock:
            pass

        lock = Lock()
        ref = weakref.ref(lock, lambda r: os.kill(os.getpid(), signal.SIGINT))
        del lock
        time.sleep(5)
        print("finished")
    """)
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (130, INTERRUPTED, "")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_signal_during_the_shutdown_keeps_the_outcome(tmp_path, signum):
    # the command finished: a signal while the interpreter shuts down (atexit) changes nothing, and
    # neither kills the process nor prints a traceback
    done = run_entry(tmp_path, f"""
        import atexit
        atexit.register(lambda: os.kill(os.getpid(), signal.{signum}))
        print("finished")
    """)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "finished\n")


@pytest.mark.parametrize("signum, word, code", [("SIGINT", "interrupted", 130), ("SIGTERM", "terminated", 143)])
def test_signal_in_parsing_says_one_line(tmp_path, signum, word, code):
    # typer turns a KeyboardInterrupt outside the command (while click parses) into exit 130 with no word
    done = run_entry(tmp_path, f"""
        try:
            os.kill(os.getpid(), signal.{signum})
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    assert (done.returncode, done.stderr.splitlines()) == (code, [f"error: {word}; nothing half-written was kept"])
