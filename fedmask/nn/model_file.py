"""The trained model as a file: ``model.safetensors``, no pickle.

A model file holds what a client's evaluation message for the final global
state holds, in the method's most compact exact form (HideNseek: P and g as
packed bits; FedPM: the thresholded mask, packed; MPFL, SSFL, FedSparsify: the
mask, packed, and the kept values; FedAvg: the float32 weights), each array as
one tensor named ``<record>/<key>``. The safetensors metadata carries the
method's config (seed, init, weight hash, N, ...) and a header: format, method,
architecture, dataset (classes, channels, image size, normalisation), N and
density. :func:`load_model` rebuilds the architecture and the seeded weights,
checks the weight hash, and runs the method's own evaluation hook, so the
module it returns is the network every client evaluated, masks folded in.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_bytes
from torch import nn

from fedmask.methods import METHOD_KEY, get_method
from fedmask.nn.class_bias import with_offset
from fedmask.nn.models import build_model
from fedmask.nn.seeded import GeneratorError, SeededNet, WeightHashError
from fedmask.nn.supermask import fold
from fedmask.wire.records import CONFIG

FORMAT = "fedmask-model/1"
HEADER_KEYS = ("format", "method", "architecture", "dataset", "num_params", "density")


class ModelFileError(ValueError):
    """A model file is truncated, corrupted, or lacks or misstates a field (named)."""


def write_model_file(path: str | Path, content: RecordDict, header: dict[str, Any]) -> int:
    """Write `content` (ArrayRecords and one ``config`` ConfigRecord) and `header`
    to `path` atomically; return the file's size in bytes."""
    tensors = {f"{name}/{key}": np.ascontiguousarray(array.numpy())
               for name, record in content.array_records.items()
               for key, array in record.items()}
    metadata = {"header": json.dumps({"format": FORMAT, **header}),
                "config": json.dumps(dict(content.config_records[CONFIG]))}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(save_bytes(tensors, metadata=metadata))
    tmp.replace(target)
    return target.stat().st_size


def _field(metadata: dict[str, str], key: str) -> Any:
    if key not in metadata:
        raise ModelFileError(f"{key}: missing from the file's metadata")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{key}: not valid JSON ({err})") from err


def read_model_file(path: str | Path) -> tuple[RecordDict, dict[str, Any]]:
    """The content and header of a model file; ModelFileError naming what is wrong."""
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    except SafetensorError as err:
        raise ModelFileError(f"{path}: not a complete safetensors file ({err})") from err
    header, config = _field(metadata, "header"), _field(metadata, "config")
    missing = [key for key in HEADER_KEYS if key not in header]
    if missing:
        raise ModelFileError(f"{missing[0]}: missing from the file's header")
    if header["format"] != FORMAT:
        raise ModelFileError(f"format: {header['format']!r}, this fedmask reads {FORMAT!r}")
    records: dict[str, dict[str, Array]] = {}
    for name, value in tensors.items():
        record, _, key = name.partition("/")
        records.setdefault(record, {})[key] = Array(value)
    content = RecordDict({name: ArrayRecord(arrays) for name, arrays in records.items()})
    content[CONFIG] = ConfigRecord(config)
    return content, header


@dataclass(frozen=True)
class StoredMessage:
    """What a method's ``eval_module`` hook reads of a message, its content, for a
    file read outside any Flower run (a real Message needs one)."""

    content: RecordDict


def architecture_name(model: nn.Module, name: str | None) -> str:
    """`name` (a fedmask model such as ``cnn``), else ``module:Class`` of `model`."""
    return name or f"{type(model).__module__}:{type(model).__qualname__}"


def build_architecture(header: dict[str, Any]) -> nn.Module:
    """A fresh module of the file's architecture: a fedmask model built for its
    dataset, or ``module:Class()`` imported from the user's code."""
    name, dataset = header["architecture"], header["dataset"]
    if ":" not in name:
        if not dataset:
            raise ModelFileError("dataset: a fedmask architecture needs the dataset's shape")
        return build_model(name, dataset["num_classes"], dataset["in_channels"],
                           dataset["image_size"], bool(header.get("output_bias", False)))
    module, _, qualname = name.partition(":")
    try:
        factory: Callable[[], nn.Module] = getattr(importlib.import_module(module), qualname)
        return factory()
    except (ImportError, AttributeError, TypeError) as err:
        raise ModelFileError(f"architecture: cannot build {name} here ({err}); pass "
                             "model=YourNet() to load_model") from err


def load_model(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The trained network of a model file as a plain module in eval mode.

    `model` is a fresh instance of the architecture (default: rebuilt from the
    file). Raises ModelFileError (truncated or corrupted file, missing field,
    unknown method, or a model whose seeded weights hash differently: other
    model code, never silently a wrong network)."""
    content, header = read_model_file(path)
    config = content.config_records[CONFIG]
    try:
        method = get_method(str(config.get(METHOD_KEY, header["method"])))
    except ValueError as err:
        raise ModelFileError(f"method: {err}") from err
    net = build_architecture(header) if model is None else model
    try:
        SeededNet.from_config(config).rebuild(net)
    except WeightHashError as err:
        raise ModelFileError(f"weight-hash: {err}") from err
    except GeneratorError as err:
        raise ModelFileError(str(err)) from err
    except (KeyError, ValueError) as err:
        raise ModelFileError(f"config: {err}") from err
    msg = cast(Message, StoredMessage(content))
    try:
        return fold(with_offset(msg, method.client_module().eval_module(msg, net,
                                                                        RecordDict())))
    except (KeyError, ValueError) as err:
        raise ModelFileError(f"{method.name}: {err}") from err
