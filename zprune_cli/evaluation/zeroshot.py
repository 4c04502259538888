"""Zero-shot accuracy through lm-eval (0.4) on a model held in memory.

Three kinds of task names are accepted: zprune's shipped offline tasks (`arc_easy_local`, ... in
`zprune_cli/tasks/`, reading a local data directory), tasks from the caller's own YAML folder (`tasks_dir`),
and lm-eval's built-in tasks (which download their data from the Hugging Face hub).

The shipped YAMLs name their files under the placeholder `__ZPRUNE_DATA_DIR__`; `zeroshot` writes copies with
the data directory's absolute path substituted into a temporary folder and points lm-eval's TaskManager there.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path
from typing import Any

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.models.offload import offloaded

SHIPPED_TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
DATA_DIR_PLACEHOLDER = "__ZPRUNE_DATA_DIR__"
DATA_DIR_ENV = "ZPRUNE_DATA_DIR"
# dataset_kwargs entries whose key starts with this may point at a file that is absent
_OPTIONAL_PREFIX = "optional_"
# a line of a shipped YAML that names a data file: `  key: "__ZPRUNE_DATA_DIR__/relative/path"`
_DATA_FILE_LINE = re.compile(r'^\s*(?P<key>\w+):\s*"' + DATA_DIR_PLACEHOLDER + r'/(?P<rel>[^"]+)"\s*$', re.MULTILINE)


def shipped_tasks() -> list[str]:
    """Names of zprune's offline tasks (each `<name>.yaml` in zprune_cli/tasks defines task `<name>`)."""
    return sorted(p.stem for p in SHIPPED_TASKS_DIR.glob("*.yaml"))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory for the shipped tasks, exactly as the settings resolved it (None: not set)."""
    return Path(data_dir).expanduser().resolve() if data_dir is not None else None


def required_data_files(task: str, data_dir: str | os.PathLike) -> list[Path]:
    """The files a shipped task reads under data_dir (optional files left out)."""
    text = (SHIPPED_TASKS_DIR / f"{task}.yaml").read_text(encoding="utf-8")
    return [
        Path(data_dir) / m.group("rel")
        for m in _DATA_FILE_LINE.finditer(text)
        if not m.group("key").startswith(_OPTIONAL_PREFIX)
    ]


def _write_resolved_tasks(dest: Path, data_dir: Path, needed: list[str]) -> None:
    """Copy the shipped YAMLs and utils.py into dest with data_dir substituted; check the needed tasks' files."""
    missing = [str(f) for task in needed for f in required_data_files(task, data_dir) if not f.is_file()]
    if missing:
        raise ZpruneError(
            f"missing data file(s) for {', '.join(needed)}: {', '.join(missing)}; set {DATA_DIR_ENV} or pass "
            "--data-dir (data_dir=) to a copy of the data directory (layout: arc/, boolq/, piqa/, ... "
            "as in shared/data/SOURCES.md)"
        )
    # JSON string escapes are valid inside YAML double quotes, so any path survives the substitution
    quoted = json.dumps(str(data_dir))[1:-1]
    for src in SHIPPED_TASKS_DIR.glob("*.yaml"):
        text = src.read_text(encoding="utf-8").replace(DATA_DIR_PLACEHOLDER, quoted)
        (dest / src.name).write_text(text, encoding="utf-8")
    shutil.copyfile(SHIPPED_TASKS_DIR / "utils.py", dest / "utils.py")


@functools.lru_cache(maxsize=1)
def _builtin_task_names() -> tuple[str, ...]:
    """Every task, group and tag name lm-eval ships (indexing them takes a few seconds, so once per process)."""
    from lm_eval.tasks import TaskManager

    return tuple(TaskManager(include_defaults=True).all_tasks)


def _local_task_names(tasks_dir: str | os.PathLike) -> list[str]:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False).all_tasks


def _unknown_task_error(unknown: list[str], known: list[str]) -> ZpruneUsageError:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        parts.append(f"'{name}'{hint}")
    noun = "task" if len(unknown) == 1 else "tasks"
    return ZpruneUsageError(f"unknown {noun} {'; '.join(parts)}; zprune's offline tasks: {', '.join(shipped_tasks())}")


@contextmanager
def _hf_offline() -> Iterator[None]:
    """Keep `datasets` and `huggingface_hub` off the network while local task files are loaded."""
    import datasets.config
    import huggingface_hub.constants

    env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    attrs = [
        (datasets.config, "HF_DATASETS_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name in attrs if hasattr(mod, name)]
    os.environ.update({k: "1" for k in env})
    for mod, name, _ in saved:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for mod, name, value in saved:
            setattr(mod, name, value)


def _stderr(value: Any) -> float | None:
    """lm-eval writes "N/A" where it has no standard error."""
    return float(value) if isinstance(value, (int, float)) else None


def _metric(res: dict[str, Any], name: str) -> float | None:
    value = res.get(f"{name},none")
    return float(value) if isinstance(value, (int, float)) else None


def zeroshot(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    tasks_dir: str | os.PathLike | None = None,
    num_fewshot: int = 0,
    limit: int | float | None = None,
    batch_size: int = 1,
    device: Any = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot (or few-shot) accuracy of an in-memory HF causal LM through lm-eval.

    tasks: lm-eval task names, zprune's `*_local` tasks, or tasks defined in `tasks_dir` (a folder of lm-eval
    YAMLs). data_dir (Settings.data_dir) is the data directory the `*_local` tasks read. limit caps the
    documents per task (a fraction when < 1, as in lm-eval). device, if given, moves the model there first.

    Returns {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}}, one entry per leaf task;
    metrics a task does not define, and standard errors lm-eval reports as "N/A", are None.
    """
    _check_arguments(tasks, batch_size, tasks_dir)
    ours = shipped_tasks()
    user = _local_task_names(tasks_dir) if tasks_dir is not None else []
    # a task of the caller's tasks_dir wins over a shipped one of the same name (later include paths override)
    needed_ours = [t for t in tasks if t in ours and t not in user]
    all_local = _check_task_names(tasks, set(ours) | set(user))
    resolved_data_dir = resolve_data_dir(data_dir)
    if needed_ours and resolved_data_dir is None:
        raise ZpruneUsageError(
            f"{', '.join(needed_ours)} read(s) a local data directory: pass --data-dir (data_dir=) or set "
            f"{DATA_DIR_ENV} to a folder with the layout of shared/data"
        )
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="zprune-tasks-") as tmp:
        include: list[str] = []
        if needed_ours:
            _write_resolved_tasks(Path(tmp), resolved_data_dir, needed_ours)
            include.append(tmp)
        if tasks_dir is not None:
            include.append(str(Path(tasks_dir).resolve()))
        task_manager = TaskManager(include_path=include or None, include_defaults=not all_local)
        # only local files are read when every task is local: keep `datasets` off the network then
        with _hf_offline() if all_local else nullcontext():
            with quiet_lm_eval():
                loaded = _load_tasks(task_manager, tasks, all_local, ours)
            if device is not None and offloaded(model) is None:  # blocks kept on the host move one at a time
                model.to(device)
            with quiet_lm_eval():
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
                out = lm_eval.simple_evaluate(model=lm, tasks=list(loaded["tasks"].values()), num_fewshot=num_fewshot,
                                              limit=limit, task_manager=task_manager, log_samples=False)
    return _scores(out, loaded["tasks"])


@contextmanager
def quiet_lm_eval():
    """lm-eval's own warnings (pretrained is not a str, already-initialised model, num_fewshot overwritten)
    and tqdm bars would flood stderr: capture them and say, in one line, how many there were."""
    if os.environ.get("ZPRUNE_DEBUG"):
        yield
        return
    import io
    import logging
    import warnings

    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage().splitlines()[0] if record.getMessage() else "")

    loggers = [logging.getLogger(name) for name in ("lm-eval", "lm_eval", "lm_eval.models.huggingface", "lm_eval.evaluator")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    collect = _Collect()
    for lg in loggers:
        lg.handlers, lg.propagate = [collect], False
    captured = tempfile.TemporaryFile(mode="w+b")
    saved_fd = os.dup(2)  # also what subprocesses print (lm-eval asks git for a version, on stderr)
    try:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        with warnings.catch_warnings(record=True) as caught, redirect_stderr(io.StringIO()) as text:
            warnings.simplefilter("always")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
    captured.seek(0)
    lines = captured.read().decode(errors="replace").splitlines() + text.getvalue().splitlines()
    captured.close()
    records += [str(w.message).splitlines()[0] for w in caught]
    records += [line for line in lines if line.strip() and "%|" not in line and not line.startswith("\r")]
    if records:
        logging.getLogger("zprune").info("lm-eval: %d warning(s) hidden, e.g. %r (ZPRUNE_DEBUG=1 shows them)",
                                         len(records), records[0][:120])


def _check_arguments(tasks: list[str], batch_size: int, tasks_dir) -> None:
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ZpruneUsageError("tasks must be a non-empty list of task names")
    if batch_size < 1:
        raise ZpruneUsageError(f"batch_size must be at least 1 (got {batch_size})")
    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise ZpruneUsageError(f"tasks directory not found: {tasks_dir}")


def _check_task_names(tasks: list[str], local: set[str]) -> bool:
    """Refuse unknown names (with close matches); True when every task is local (no hub needed)."""
    not_local = [t for t in tasks if t not in local]  # lm-eval built-ins: indexing them takes seconds
    if not_local:
        builtin = _builtin_task_names()
        unknown = [t for t in not_local if t not in builtin]
        if unknown:
            raise _unknown_task_error(unknown, sorted(local | set(builtin)))
    return not not_local


def _load_tasks(task_manager, tasks: list[str], all_local: bool, ours: list[str]):
    try:
        return task_manager.load(list(tasks))
    except ZpruneError:
        raise
    except Exception as e:  # lm-eval and datasets raise many types; the user needs one line
        first_line = (str(e).strip().splitlines() or [""])[0]
        hint = "" if all_local else (
            f"; lm-eval's built-in tasks download from the Hugging Face hub (offline, use {', '.join(ours)})")
        raise ZpruneError(f"could not load tasks {', '.join(tasks)}: {type(e).__name__}: {first_line}{hint}") from e


def _scores(out: dict, loaded_tasks: dict) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, res in out["results"].items():
        if name not in loaded_tasks:
            continue  # a group's aggregate
        n_samples = out.get("n-samples", {}).get(name, {})
        results[name] = {
            "acc": _metric(res, "acc"),
            "acc_stderr": _stderr(res.get("acc_stderr,none")),
            "acc_norm": _metric(res, "acc_norm"),
            "acc_norm_stderr": _stderr(res.get("acc_norm_stderr,none")),
            "n": int(n_samples.get("effective", n_samples.get("original", 0))),
        }
    return results

