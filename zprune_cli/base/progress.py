"""Progress reporting the library can call without knowing about rich or a terminal."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol


class ProgressTask(Protocol):
    def advance(self, n: int = 1) -> None: ...


class Progress(Protocol):
    """The CLI passes a rich-backed implementation; library callers may pass none."""

    def task(self, description: str, total: int | None) -> "contextmanager[ProgressTask]": ...

    def log(self, message: str) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass


class NullProgress:
    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_NullTask]:
        yield _NullTask()

    def log(self, message: str) -> None:
        import logging

        logging.getLogger("zprune").info(message)


def ensure(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()
