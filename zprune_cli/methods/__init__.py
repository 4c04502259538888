"""The pruning methods, by name. Adding a method is adding one file: a module in this folder with a
@register'ed class; every module here is imported (so registered) when the package is."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.methods.base import METHODS, Method, PruneResult, prune_precision, register


def discover(package: str = __name__, path: list[str] | None = None) -> list[str]:
    """Import every module of the package (importing a method's module registers it); the names imported."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__ if path is None else path) if not m.ispkg)
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


discover()

__all__ = ["METHODS", "prune_precision", "Method", "PruneResult", "get_method", "method_names", "register"]


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)


def method_titles() -> dict[str, str]:
    """Each registered method's one-line title for the help: its class's `title`, else its module
    docstring's first line up to the colon ('Wanda (Sun et al., 2023)'), so a new method needs nothing more."""
    titles = {}
    for name in method_names():
        cls = METHODS[name]
        doc = (inspect.getmodule(cls).__doc__ or name).strip().splitlines()[0]
        titles[name] = getattr(cls, "title", None) or doc.split(":")[0].strip().rstrip(".")
    return titles


def method_options(name: str) -> dict[str, object]:
    """A method's constructor options and their defaults, e.g. {'a': 0.5} for ria."""
    return {
        p.name: p.default
        for p in inspect.signature(_method_class(name)).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def owl_scorer() -> Method:
    """The method whose scores OWL's outlier share is defined on (the one registered with `owl_score`)."""
    found = [name for name in method_names() if METHODS[name].owl_score]
    if len(found) != 1:
        raise ZpruneUsageError(f"OWL needs exactly one method declaring owl_score; found {found or 'none'}")
    return get_method(found[0])


def get_method(name: str, **options: object) -> Method:
    """A configured method: get_method("ria", a=0.5). Unknown names or options raise ZpruneUsageError."""
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ZpruneUsageError(f"method {name!r} has no option {', '.join(unknown)} (options: {accepted})")
    return _method_class(name)(**options)


def _method_class(name: str) -> type[Method]:
    key = name.strip().lower() if isinstance(name, str) else name  # `--method Wanda` is wanda
    if key not in METHODS:
        raise ZpruneUsageError(f"unknown method {name!r}: choose one of {', '.join(method_names())}")
    return METHODS[key]
