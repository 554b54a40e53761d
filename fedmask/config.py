"""Run configuration: every option, its default, and its validation.

Keys are kebab-case as in ``[tool.flwr.app.config]`` of ``pyproject.toml``; the
defaults there must match :data:`OPTIONS` (a test checks it). :data:`COMMON`
holds the options every method shares; each method adds its own
(:mod:`fedmask.methods`). A bad value fails at start with a
:class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmask.data import hub
from fedmask.data.datasets import DATASETS, PARTITIONS
from fedmask.methods import REGISTRY
from fedmask.methods.masked.wire import VALUE_FORMATS
from fedmask.nn.models import INITS, MODELS
from fedmask.nn.placement import DEVICE_RULE, PRECISIONS, valid_device
from fedmask.nn.training import MIN_LOCAL_STEPS, OPTIMIZERS
from fedmask.options import Option, choice, flag, in_range, non_negative, positive
from fedmask.wire.coding import CODINGS

_AUTO = {"optimizer": "auto", "lr": 0.0, "init": "auto"}


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


COMMON: dict[str, Option] = {
    "method": choice("hidenseek", REGISTRY),
    "dataset": Option("fashion-mnist", bool,
                      f"one of {sorted(DATASETS)}, a Hugging Face dataset id or a local "
                      "dataset folder"),
    "image-column": Option(""),
    "label-column": Option(""),
    "data-root": Option("~/.cache/fedmask/data"),
    "model": choice("cnn", sorted(MODELS)),
    "init": choice("auto", ("auto", *INITS)),
    "partition": choice("iid", PARTITIONS),
    "alpha": positive(0.5),
    "seed": in_range(0, 0, 2**63 - 1),
    "num-server-rounds": positive(5),
    "local-epochs": positive(1),
    "min-local-steps": non_negative(MIN_LOCAL_STEPS),
    "personal-epochs": non_negative(1, help="HideNseek and FedAvg (FedAvg-FT): fine-tuning "
                                            "epochs for personalised accuracy (0 = off)"),
    "batch-size": positive(64),
    "optimizer": choice("auto", ("auto", *OPTIMIZERS)),
    "lr": non_negative(0.0),
    "momentum": in_range(0.9, 0.0, 1.0),
    "fraction-train": in_range(1.0, 0.0, 1.0, lo_open=True),
    "fraction-evaluate": in_range(0.2, 0.0, 1.0),
    "min-nodes": positive(2),
    "node-wait-s": positive(60.0),
    "round-timeout-s": positive(3600.0),
    "density": in_range(0.5, 0.0, 1.0, lo_open=True),
    "mask-coding": choice("entropy", CODINGS),
    "model-value-format": choice("float32", VALUE_FORMATS),
    "value-format": choice("float32", VALUE_FORMATS),
    "test-fraction": in_range(0.2, 0.0, 1.0, lo_open=True),
    "train-limit": non_negative(0),
    "test-limit": non_negative(0),
    "validation-size": non_negative(0),
    "out-dir": Option(""),
    "resume": flag(False),
    "device": Option("auto", valid_device, DEVICE_RULE),
    "precision": choice("float32", PRECISIONS),
    "loader-workers": non_negative(0),
    "pin-memory": flag(True),
    "deterministic": flag(False),
}
OPTIONS: dict[str, Option] = {**COMMON, **{key: option for method in REGISTRY.values()
                                           for key, option in method.options.items()}}
# May change when resuming (they change how long the server waits or how data is fed,
# never the result).
RESUME_FREE = ("resume", "round-timeout-s", "node-wait-s", "loader-workers", "pin-memory")


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
            config[key] = REGISTRY[config["method"]].defaults[key]
    config["dataset"] = _dataset_reference(config)
    return config


def _dataset_reference(config: dict[str, Any]) -> str:
    """``dataset`` with ``image-column`` / ``label-column`` (a Hugging Face dataset's
    columns) folded in: the one string the data functions take."""
    for key in ("image-column", "label-column"):
        if config[key] and config["dataset"] in DATASETS:
            raise ConfigError(f"{key}: names a column of a Hugging Face dataset; "
                              f"{config['dataset']!r} is built in (leave {key} empty)")
    return hub.reference(config["dataset"], config["image-column"], config["label-column"])
