"""Progress on stderr: bars that fit a terminal of any width and are drawn once, lines in a pipe that
say a long step is alive, and progress kept with --json (stdout stays pure JSON)."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.cli.progress import LineProgress, RichProgress, short_label

TOKENISING = "Tokenising c4-sample (sample, /home/someone/work/shared/data/c4/c4-train.00000-of-01024.sample.jsonl)"
LOADING = "Loading /home/someone/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q8_0.gguf on cpu as float32"


def screen(raw: str, width: int) -> list[str]:
    """What a terminal shows after `raw`: the controls rich's live display uses (\\r, \\n, cursor up,
    erase line), lines wrapping at `width`; styles and cursor visibility ignored."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for m in re.finditer(r"\x1b\[([0-9;?]*)([A-Za-z])|(.)", raw, re.S):
        ch, arg, cmd = m.group(3), m.group(1), m.group(2)
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch is not None:
            if col >= width:
                row, col = row + 1, 0
            while len(rows) <= row:
                rows.append([])
            rows[row] += [" "] * (col + 1 - len(rows[row]))
            rows[row][col] = ch
            col += 1
        elif cmd == "A":
            row = max(0, row - int(arg or 1))
        elif cmd == "K" and arg == "2" and row < len(rows):
            rows[row] = []
        while len(rows) <= row:
            rows.append([])
    return ["".join(r).rstrip() for r in rows if "".join(r).strip()]


def test_short_label_keeps_names_of_paths_and_hub_ids_whole():
    assert short_label(TOKENISING) == "Tokenising c4-sample (sample, c4-train.00000-of-01024.sample.jsonl)"
    assert short_label(LOADING) == "Loading SmolLM2-135M-Instruct.Q8_0.gguf on cpu as float32"
    assert short_label("Loading HuggingFaceTB/SmolLM2-135M on cpu") == "Loading HuggingFaceTB/SmolLM2-135M on cpu"
    assert short_label("Saving to ./runs/pruned/") == "Saving to pruned"
    assert short_label("Saving to ~/runs/x-50") == "Saving to x-50"


@pytest.mark.parametrize("width", [80, 100, 160])
def test_bars_keep_their_bar_and_count_at_any_width(width, monkeypatch):
    monkeypatch.delenv("ZPRUNE_NO_PROGRESS")
    console = Console(width=width, force_terminal=True, file=io.StringIO())
    bars = RichProgress(console=console)
    with bars.task(LOADING, None), bars.task(TOKENISING, None), bars.task("Pruning with wanda", 32) as task:
        task.advance(12)
        shown = Console(width=width, force_terminal=True, record=True, file=io.StringIO())
        shown.print(bars._bars.get_renderable())
    lines = shown.export_text().splitlines()
    assert len(lines) == 3 and all(len(line) <= width for line in lines), lines
    for line, count in zip(lines, ["0/?", "0/?", "12/32"]):
        assert count in line and "━" * 5 in line and "ETA" in line, line
    assert "SmolLM2-135M-Instruct" in lines[0] and "/home/someone" not in lines[0]
    if width < 160:
        assert "…" in lines[1]  # the label gives way, not the bar
    else:
        assert "c4-train.00000-of-01024.sample.jsonl" in lines[1]


def test_each_step_is_drawn_once_and_log_lines_go_above_the_bars(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from zprune_cli.cli.output import setup_logging, stderr_console

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("ZPRUNE_NO_PROGRESS")
    setup_logging(quiet=False)
    bars = RichProgress()
    with bars.task(LOADING, None):
        time.sleep(0.15)  # a refresh or two while it runs
        bars.log("resolved the model")
    for label in ("Tokenising c4", "Embedding calibration windows"):
        with bars.task(label, 4) as task:
            task.advance(4)
    assert bars._bars.console is stderr_console()  # one console: logs print above the live bars
    shown = screen(terminal.getvalue(), 100)
    assert [line.split()[0] for line in shown if "━" in line] == ["Loading", "Tokenising", "Embedding"], shown
    assert sum("resolved the model" in line for line in shown) == 1, shown


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_long_step_in_a_pipe_says_it_is_alive(capsys):
    clock = Clock()
    lines = LineProgress(interval=30, clock=clock)  # its thread waits 30 real seconds: the test drives beat()
    with lines.task("Pruning with wanda", 32) as task:
        clock.now += 10
        task.advance(5)
        assert lines.beat() == pytest.approx(20) and capsys.readouterr().err == ""
        clock.now += 20
        lines.beat()
        assert capsys.readouterr().err == "Pruning with wanda: 5/32, 30 s so far\n"
        clock.now += 15
        lines.beat()
        assert capsys.readouterr().err == ""  # 15 s since the last line
        task.advance(7)
        clock.now += 135
        lines.beat()
        clock.now += 30
        lines.beat()
        assert capsys.readouterr().err == ("Pruning with wanda: 12/32, 3 min so far\n"
                                           "Pruning with wanda: 12/32, 3 min 30 s so far\n")
        clock.now += 5
    assert capsys.readouterr().err == "Pruning with wanda: 12/32 done in 215.0s\n"


def test_the_innermost_step_speaks_and_a_step_without_total_gives_its_time(capsys):
    clock = Clock()
    lines = LineProgress(interval=30, clock=clock)
    with lines.task("Grid of 3 cells", 3):
        with lines.task("Loading smollm2-135m on cpu", None):
            clock.now += 3700
            lines.beat()
            assert capsys.readouterr().err == "  Loading smollm2-135m on cpu: 1 h 01 min so far\n"
            clock.now += 1
        assert capsys.readouterr().err == "  Loading smollm2-135m on cpu: done in 3701.0s\n"
        clock.now += 29
        lines.beat()  # the line just printed counts: 29 s of silence is not yet 30
        assert capsys.readouterr().err == ""


def test_the_heartbeat_thread_prints_and_short_steps_print_nothing_more(capsys):
    lines = LineProgress(interval=0.05)
    with lines.task("Calibrating 2 blocks", 2) as task:
        time.sleep(0.4)
        task.advance(1)
    err = capsys.readouterr().err.splitlines()
    alive = [line for line in err if line.endswith("so far")]
    assert len(alive) >= 2 and all(re.fullmatch(r"Calibrating 2 blocks: 0/2, 0 s so far", line) for line in alive), err
    assert re.fullmatch(r"Calibrating 2 blocks: 1/2 done in 0\.\ds", err[-1]) and len(err) == len(alive) + 1
    time.sleep(0.15)  # the thread has stopped: nothing after the step ended
    with LineProgress().task("Tokenising c4", None):
        time.sleep(0.1)
    assert re.fullmatch(r"Tokenising c4: done in 0\.\ds\n", capsys.readouterr().err)


def test_json_keeps_progress_on_stderr_and_stdout_pure(tiny_dir, text_file, cache, monkeypatch):
    monkeypatch.delenv("ZPRUNE_NO_PROGRESS")
    result = CliRunner().invoke(app, ["calibrate", str(tiny_dir), "--data", str(text_file), "-n", "2", "-l", "16",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hit"] is False
    steps = [line.split(":")[0] for line in result.stderr.splitlines() if " done in " in line]
    # the windows are drawn before the model loads (a text too short for them is refused without loading it)
    assert steps[:2] == [f"Tokenising {text_file}", f"Loading {tiny_dir} on cpu as float32"], result.stderr
    assert "Calibrating 2 blocks" in steps, result.stderr
    quiet = CliRunner().invoke(app, ["calibrate", str(tiny_dir), "--data", str(text_file), "-n", "2", "-l", "16",
                                     "--json", "-q"])
    assert json.loads(quiet.stdout)["hit"] is True and " done in " not in quiet.stderr
