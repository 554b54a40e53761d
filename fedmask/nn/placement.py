"""Where training and evaluation run: the ``device`` and ``precision`` options.

``device`` is ``auto`` (the first CUDA device this process sees, else Apple's
MPS, else the CPU; in a Ray simulation an actor sees the GPUs that
``client-resources-num-gpus`` gave it), ``cpu``, ``cuda``, ``cuda:N`` or
``mps``. ``precision = "bf16"`` runs forward passes under ``torch.autocast``
with bfloat16; masks, their aggregation and everything on the wire stay exact.
``deterministic = true`` switches on PyTorch's deterministic algorithms (an op
without one raises, naming it) and fixes cuBLAS's workspace, so GPU runs repeat
bit for bit; CPU runs repeat anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

DEVICE_RULE = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("float32", "bf16")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def valid_device(name: str) -> bool:
    """Whether `name` is a device name the ``device`` option accepts."""
    return _DEVICE.fullmatch(name) is not None


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means here; ValueError naming ``device`` when this
    process cannot use it."""
    if not valid_device(name):
        raise ValueError(f"device: {name!r} is not allowed; must be {DEVICE_RULE}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"device: {name!r} is not available here ({count} CUDA "
                             f"device(s) visible); use device='auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: 'mps' is not available here; use device='auto' or 'cpu'")
    return device


def use_deterministic(on: bool) -> None:
    """PyTorch's deterministic algorithms in this process when `on` (else its default)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bfloat16 autocast on `device` when `precision` is ``bf16``; else nothing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


@dataclass(frozen=True)
class Placement:
    """The device and precision a process trains and evaluates at."""

    device: torch.device = torch.device("cpu")
    precision: str = "float32"

    @classmethod
    def from_config(cls, run_config: Mapping[str, Any],
                    node_config: Mapping[str, Any] | None = None) -> Placement:
        """From the parsed run config's ``device`` and ``precision``; a node config's
        ``device`` (a SuperNode's own) wins. ValueError naming ``device`` when this
        process cannot use it. Also applies ``deterministic`` to this process."""
        name = str((node_config or {}).get("device", run_config["device"]))
        use_deterministic(bool(run_config.get("deterministic", False)))
        return cls(resolve_device(name), str(run_config["precision"]))


ON_CPU = Placement()  # the default: CPU, float32
