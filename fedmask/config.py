"""Run configuration: every option, its default, and its validation.

Keys are kebab-case as in ``[tool.flwr.app.config]`` of ``pyproject.toml``; the
defaults there must match :data:`OPTIONS` (a test checks it). A bad value fails
at start with a :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedmask.data.datasets import DATASETS, PARTITIONS
from fedmask.wire.coding import CODINGS
from fedmask.nn.supermask import ESTIMATORS
from fedmask.nn.models import INITS, MODELS
from fedmask.methods.fedpm.wire import THETA_DTYPES
from fedmask.methods.fedsparsify.wire import VARIANTS
from fedmask.methods.ssfl.wire import SALIENCY_DTYPES
from fedmask.nn.pruning import PRUNE_STRUCTURES
from fedmask.nn.training import OPTIMIZERS

METHODS = ("hidenseek", "fedpm", "mpfl", "ssfl", "fedsparsify", "fedavg")
# What `optimizer = "auto"`, `lr = 0` and `init = "auto"` resolve to: mask
# scores train best with Adam, dense weights with SGD + momentum (measured on
# FashionMNIST); FedPM's frozen weights are signed constants as in its paper.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "hidenseek": {"optimizer": "adam", "lr": 0.01, "init": "kaiming-normal"},
    "fedpm": {"optimizer": "adam", "lr": 0.1, "init": "signed-constant"},
    "mpfl": {"optimizer": "sgd", "lr": 0.05, "init": "kaiming-normal"},
    "ssfl": {"optimizer": "sgd", "lr": 0.05, "init": "kaiming-normal"},
    "fedsparsify": {"optimizer": "sgd", "lr": 0.05, "init": "kaiming-normal"},
    "fedavg": {"optimizer": "sgd", "lr": 0.05, "init": "kaiming-normal"},
}
_AUTO = {"optimizer": "auto", "lr": 0.0, "init": "auto"}


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Option:
    """One run-config key: default, type, and an optional check with its rule."""

    default: Any
    check: Callable[[Any], bool] | None = None
    rule: str = ""


def _choice(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {"check": lambda v: v in values, "rule": f"one of {list(values)}"}


def _range(lo: float, hi: float, lo_open: bool = False) -> dict[str, Any]:
    def check(v: float) -> bool:
        return (lo < v if lo_open else lo <= v) and v <= hi
    return {"check": check, "rule": f"in {'(' if lo_open else '['}{lo}, {hi}]"}


_POSITIVE = {"check": lambda v: v > 0, "rule": "> 0"}
_NON_NEGATIVE = {"check": lambda v: v >= 0, "rule": ">= 0"}

OPTIONS: dict[str, Option] = {
    "method": Option("hidenseek", **_choice(METHODS)),
    "dataset": Option("fashion-mnist", **_choice(sorted(DATASETS))),
    "data-root": Option("~/.cache/fedmask/data"),
    "model": Option("cnn", **_choice(sorted(MODELS))),
    "init": Option("auto", **_choice(("auto", *INITS))),
    "partition": Option("iid", **_choice(PARTITIONS)),
    "alpha": Option(0.5, **_POSITIVE),
    "seed": Option(0, **_range(0, 2**63 - 1)),
    "num-server-rounds": Option(5, **_POSITIVE),
    "local-epochs": Option(1, **_POSITIVE),
    "batch-size": Option(64, **_POSITIVE),
    "optimizer": Option("auto", **_choice(("auto", *OPTIMIZERS))),
    "lr": Option(0.0, **_NON_NEGATIVE),
    "momentum": Option(0.9, **_range(0.0, 1.0)),
    "fraction-train": Option(1.0, **_range(0.0, 1.0, lo_open=True)),
    "fraction-evaluate": Option(0.2, **_range(0.0, 1.0)),
    "min-nodes": Option(2, **_POSITIVE),
    "node-wait-s": Option(60.0, **_POSITIVE),
    "round-timeout-s": Option(3600.0, **_POSITIVE),
    "density": Option(0.5, **_range(0.0, 1.0, lo_open=True)),
    "synflow-iterations": Option(100, **_POSITIVE),
    "prune-scope": Option("global", **_choice(("global", "layer"))),
    "personal-epochs": Option(1, **_NON_NEGATIVE),
    "mask-coding": Option("packed", **_choice(CODINGS)),
    "estimator": Option("ste", **_choice(ESTIMATORS)),
    "prior-reset": Option(1, **_NON_NEGATIVE),
    "weighted-aggregation": Option(False),
    "theta-format": Option("uint8", **_choice(tuple(THETA_DTYPES))),
    "eval-samples": Option(3, **_NON_NEGATIVE),
    "prune-rate": Option(0.2, **_range(0.0, 1.0, lo_open=True)),
    "prune-structure": Option("unstructured", **_choice(PRUNE_STRUCTURES)),
    "saliency-batches": Option(1, **_POSITIVE),
    "saliency-format": Option("float16", **_choice(tuple(SALIENCY_DTYPES))),
    "saliency-weighted": Option(True),
    "fedsparsify-variant": Option("global", **_choice(VARIANTS)),
    "final-sparsity": Option(0.9, check=lambda v: 0.0 <= v < 1.0, rule="in [0.0, 1.0)"),
    "prune-start": Option(1, **_POSITIVE),
    "prune-every": Option(1, **_POSITIVE),
    "nnz-average": Option(False),
    "test-fraction": Option(0.2, **_range(0.0, 1.0, lo_open=True)),
    "train-limit": Option(0, **_NON_NEGATIVE),
    "test-limit": Option(0, **_NON_NEGATIVE),
    "out-dir": Option(""),
    "resume": Option(False),
}
RESUME_FREE = ("resume", "round-timeout-s", "node-wait-s")  # may change when resuming


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Return `value` as the type of `default` (ints are accepted for floats)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def parse(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `run_config`, fill in defaults, and return the full option dict."""
    unknown = sorted(set(run_config) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; allowed: {sorted(OPTIONS)}")
    config = {}
    for key, opt in OPTIONS.items():
        value = _coerce(key, run_config.get(key, opt.default), opt.default)
        if opt.check is not None and not opt.check(value):
            raise ConfigError(f"{key}: {value!r} is not allowed; must be {opt.rule}")
        config[key] = value
    if config["resume"] and not config["out-dir"]:
        raise ConfigError("resume: needs out-dir, the folder of the run to resume")
    for key, sentinel in _AUTO.items():
        if config[key] == sentinel:
            config[key] = METHOD_DEFAULTS[config["method"]][key]
    return config
