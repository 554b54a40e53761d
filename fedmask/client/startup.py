"""What a ClientApp process spends before it trains: a SuperNode starts one process
per message (Flower's process isolation), so imports, data loading and the model
build are paid for every message."""

from __future__ import annotations

import os
from pathlib import Path

_reported = False  # this process has reported its start already


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``, to 0.01 s; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in ticks
    return max(uptime - started, 0.0)


def first_step_s() -> float | None:
    """:func:`process_age_s` the first time a process calls it, None after (a Ray
    actor of a simulation answers many messages: only its first reports)."""
    global _reported
    if _reported:
        return None
    _reported = True
    return process_age_s()

