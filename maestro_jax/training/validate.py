"""Config checks of the trainers, run before any compute: each failure is one line naming the
field, the value and what is allowed (`ConfigError`, a ValueError; `maestro_jax.train` prints
it as `error: ...` and exits with status 2)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config field holds a value the trainer cannot use."""


def get(config: Any, field: str) -> Any:
    """`config.a.b` for field 'a.b' (ConfigError when absent)."""
    node = config
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            raise ConfigError(f"config.{field} is missing") from None
    return node


def _number(config: Any, field: str, kind: type) -> Any:
    v = get(config, field)
    ok = isinstance(v, int) if kind is int else isinstance(v, int | float)
    if isinstance(v, bool) or not ok:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"config.{field}={v!r}: must be {what}")
    return v


def at_least(config: Any, lo: int, *fields: str) -> None:
    """Integer fields >= lo."""
    for f in fields:
        v = _number(config, f, int)
        if v < lo:
            raise ConfigError(f"config.{f}={v}: must be an integer >= {lo}")


def positive(config: Any, *fields: str) -> None:
    """Number fields > 0."""
    for f in fields:
        v = _number(config, f, float)
        if not v > 0:
            raise ConfigError(f"config.{f}={v}: must be > 0")


def non_negative(config: Any, *fields: str) -> None:
    """Number fields >= 0."""
    for f in fields:
        v = _number(config, f, float)
        if not v >= 0:
            raise ConfigError(f"config.{f}={v}: must be >= 0")


def in_range(config: Any, field: str, lo: float, hi: float) -> None:
    v = _number(config, field, float)
    if not lo <= v <= hi:
        raise ConfigError(f"config.{field}={v}: must lie in [{lo}, {hi}]")


def one_of(config: Any, field: str, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    v = get(config, field)
    if v not in allowed:
        raise ConfigError(f"config.{field}={v!r}: must be one of {', '.join(map(repr, allowed))}")
