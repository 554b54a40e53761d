"""Run-config options: a default, a type (the default's) and a check with its rule.

Shared by the common options (:mod:`fedmask.config`) and each method's own
(:mod:`fedmask.methods`). Keys are kebab-case; a constructor argument of the
same concept has the snake-case name (``mask-coding`` -> ``mask_coding``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One run-config key: default, an optional check, the rule it states, and help."""

    default: Any
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    help: str = ""


def choice(default: str, values: Iterable[str], help: str = "") -> Option:
    """An option whose value is one of `values`."""
    allowed = tuple(values)
    return Option(default, lambda v: v in allowed, f"one of {list(allowed)}", help)


def in_range(default: float, lo: float, hi: float, lo_open: bool = False,
             hi_open: bool = False, help: str = "") -> Option:
    """An option in [lo, hi] (either end open when asked)."""
    def check(v: float) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Option(default, check, rule, help)


def positive(default: float, help: str = "") -> Option:
    """An option > 0."""
    return Option(default, lambda v: v > 0, "> 0", help)


def non_negative(default: float, help: str = "") -> Option:
    """An option >= 0."""
    return Option(default, lambda v: v >= 0, ">= 0", help)


def flag(default: bool, help: str = "") -> Option:
    """A boolean option."""
    return Option(default, None, "true or false", help)


def argument_name(key: str) -> str:
    """The constructor argument of run-config `key`: ``mask-coding`` -> ``mask_coding``."""
    return key.replace("-", "_")
