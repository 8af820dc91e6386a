"""Experiment configs as papermill parameters, checked strictly.

Papermill only *warns* about a parameter the notebook does not declare, so a typo silently runs
the defaults. Each notebook therefore opens with ``scope = params.Scope(globals())``, lists its
parameters in the cell tagged ``parameters`` and builds its config with ``scope.config(Config)``:
an unknown name, a missing name or a wrong type raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from gremlinkit.errors import ConfigError

C = TypeVar("C")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:  # an int is a fine float; a bool is not a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and (item is Any or all(_matches(v, item) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, hint)


def from_params(cls: type[C], params: dict[str, Any], *, require_all: bool = False) -> C:
    """Build ``cls`` from ``params``, rejecting unknown names, missing names and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for {cls.__name__}; valid parameters: {names}")
    if require_all:
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"parameter(s) {missing} of {cls.__name__} are missing from the parameters cell")
    for name, value in params.items():
        if not _matches(value, hints[name]):
            raise ConfigError(f"parameter {name}={value!r} has type {type(value).__name__}; "
                              f"{cls.__name__}.{name} takes {_type_name(hints[name])}")
    return cls(**params)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ConfigError unless low <= value <= high (either bound may be open)."""
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(f"parameter {name}={value!r} is out of range: valid range is [{lo}, {hi}]")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"parameter {name}={value!r} is not one of {choices}")


DEVICE_HELP = '"auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...'
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an experiment's models run; every experiment config inherits these two parameters."""

    device: str = "auto"  # "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto" (the model's recommended, else the checkpoint's own), "float32", "bfloat16", "float16"

    def recommended(self, name: str) -> Any:
        """What the provider of this config's model recommends for parameter ``name`` (None if
        nothing): the value an ``"auto"`` parameter takes (`gremlinkit.providers.settings`)."""
        from gremlinkit import providers

        model = getattr(self, "model", "") or getattr(self, "base", "") or (getattr(self, "models", None) or [""])[0]
        return providers.settings(model).get(name) if isinstance(model, str) else None

    def load_kwargs(self) -> dict[str, Any]:
        """``device`` and ``dtype`` for `gremlinkit.load`, checked: "auto" becomes None (CUDA where
        there is one; the dtype the model's provider recommends, else the checkpoint's own)."""
        import torch

        check_choice("dtype", self.dtype, DTYPES)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(f"parameter device={self.device!r} is not a device: use {DEVICE_HELP}") from None
        return {"device": None if self.device == "auto" else self.device,
                "dtype": self.recommended("dtype") if self.dtype == "auto" else self.dtype}


class Scope:
    """Remembers the names a notebook defined before its parameters cell."""

    def __init__(self, namespace: dict[str, Any]):
        self._namespace = namespace
        self._before = set(namespace)

    def params(self) -> dict[str, Any]:
        """Names defined since: the parameters cell and papermill's injected cell."""
        return {k: v for k, v in self._namespace.items()
                if k not in self._before and not k.startswith("_") and k not in ("In", "Out")
                and v is not self}

    def config(self, cls: type[C]) -> C:
        return from_params(cls, self.params(), require_all=True)


# --------------------------------------------------------------------------- command-line flags


def _word(text: str) -> Any:
    """One command-line word as a parameter value: an int or a float where it reads as one."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def field_comments(cls: type) -> dict[str, str]:
    """The comment after each field of the dataclass ``cls`` (and its bases) in its source: what
    the field is, as the notebook's parameters cell says it."""
    import inspect
    import re

    out = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        out.update(re.findall(r"^    (\w+): [^=\n]+=.*?  # (.+)$", source, re.M))
    return out


def add_flags(parser: Any, cls: type, skip: typing.Iterable[str] = ()) -> None:
    """A ``--name`` flag (underscores as dashes) for every field of the config ``cls`` but ``skip``:
    lists take several words (none for an empty list), booleans come as ``--name`` / ``--no-name``."""
    import argparse

    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{comments.get(f.name, f.name)} (default: {default!r})".replace("%", "%%")
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(hint) is list or hint is list or hint is Any:
            parser.add_argument(flag, nargs="*", type=_word, default=None, metavar="VALUE", help=help_text)
        else:
            parser.add_argument(flag, type=hint if hint in (int, float) else str, default=None, help=help_text)


def from_flags(cls: type[C], namespace: Any, **given: Any) -> C:
    """Build ``cls`` from the flags of `add_flags` that were given (and ``given``), checked as
    `from_params` checks a notebook's parameters. A field that takes any value (``features``)
    reads one word as itself ("live", "random-8") and several as a list."""
    hints = typing.get_type_hints(cls)
    params = dict(given)
    for f in dataclasses.fields(cls):
        value = getattr(namespace, f.name, None)
        if value is None or f.name in given:
            continue
        if hints[f.name] is Any and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        params[f.name] = value
    return from_params(cls, params)
