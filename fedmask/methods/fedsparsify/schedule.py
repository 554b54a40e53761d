"""FedSparsify's pruning schedule: which rounds prune, and to what sparsity.

The cubic schedule of Zhu & Gupta (2017): from round `start` to round `end`
the sparsity rises from `initial` to `final` as
``s_t = final + (initial - final) * (1 - (t - start) / (end - start))^3``,
fast at first and flattening out. Pruning happens every `every` rounds from
`start`, and always at `end`, so the last round reaches `final` exactly.
"""

from __future__ import annotations


def check_schedule(start: int, end: int, every: int, final: float) -> None:
    """Raise ValueError, naming the option, unless the schedule is well defined."""
    if start < 1:
        raise ValueError(f"prune-start: must be >= 1, got {start}")
    if end < start:
        raise ValueError(f"prune-start: {start} is after the last round {end}")
    if every < 1:
        raise ValueError(f"prune-every: must be >= 1, got {every}")
    if not 0.0 <= final < 1.0:
        raise ValueError(f"final-sparsity: must be in [0, 1), got {final}")


def cubic_sparsity(t: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """The cubic schedule's sparsity at round `t` (`initial` before `start`,
    `final` from `end` on)."""
    if t < start:
        return initial
    if t >= end:
        return final
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


def scheduled_sparsity(t: int, start: int, end: int, every: int, final: float) -> float:
    """The sparsity in force after round `t`: that of the last pruning round <= t."""
    if t < start:
        return 0.0
    if t >= end:
        return final
    return cubic_sparsity(start + (t - start) // every * every, start, end, final)
