"""Wire contracts: record keys and payload (de)coding, shared by strategy and client."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import Tensor, nn

from fedmask.nn.pruning import prunable_names
from fedmask.nn.supermask import attach, supermasks
from fedmask.wire.bits import flatten_masks, split_flat

CONFIG = "config"  # ConfigRecord, server -> client
METRICS = "metrics"  # MetricRecord, client -> server
NUM_EXAMPLES = "num-examples"
NUM_PARAMS = "num-params"  # config: N, the number of prunable weights
MASK_CODING = "mask-coding"  # config: "packed" or "entropy" (fedmask.wire.coding)
MAX_EXAMPLES = 10**9  # bound on a reply's declared num-examples
CLIENT_SECONDS = "client-s"  # metric: seconds the ClientApp spent on a message
# metric: seconds from the ClientApp process's start to its first training step, sent
# with the first message a process trains on (fedmask.client.startup)
START_SECONDS = "start-s"


V = TypeVar("V", int, float, str, bool)
UserConfig = Mapping[str, Any]  # a run or node config
Encoder = Callable[[nn.Module], dict[str, ArrayRecord]]  # trained module -> reply arrays
TrainModule = tuple[nn.Module, Encoder]  # what a method's ``train_module`` hook returns


class ReplyError(ValueError):
    """A client's reply is malformed; `field` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def config_value(config: ConfigRecord | UserConfig, key: str, kind: type[V],
                 default: V | None = None) -> V:
    """``config[key]`` as `kind` (``int``, ``float``, ``str`` or ``bool``; an int is a
    float too), `default` when absent; ReplyError naming the key otherwise."""
    value = config.get(key, default)
    if value is None:
        raise ReplyError(key, "missing from the config")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ReplyError(key, f"expected {kind.__name__}, got {value!r}")
    return value


def array(record: ArrayRecord, key: str) -> np.ndarray:
    """The numpy array ``record[key]``; raise ReplyError if it is missing."""
    if key not in record:
        raise ReplyError(key, "missing")
    return record[key].numpy()


def reply_array(msg: Message, record: str, key: str) -> np.ndarray:
    """The only array, `key`, of a reply's ArrayRecord `record`; raise ReplyError if
    the record is missing or holds other keys."""
    if record not in msg.content.array_records:
        raise ReplyError(record, "missing ArrayRecord")
    found = msg.content.array_records[record]
    if list(found) != [key]:
        raise ReplyError(record, f"expected only {key!r}, got {list(found)}")
    return found[key].numpy()


def attach_flat(model: nn.Module, make: Callable[..., nn.Module], *flats: np.ndarray,
                freeze: bool = True) -> nn.Module:
    """Attach ``make(weight, *chunks)`` to every prunable weight of `model` (in place).

    Each flat array of `flats` covers all prunable weights in
    :func:`~fedmask.nn.pruning.prunable_names` order and is split per weight.
    With `freeze` (supermasks) the weights stop training; without it (a fixed
    pruning mask) they go on training under the parametrisation.
    """
    names = prunable_names(model)
    params = dict(model.named_parameters())
    shapes = {name: tuple(params[name].shape) for name in names}
    chunks = [split_flat(flat, shapes) for flat in flats]
    attach(model, lambda name, w: make(w, *(c[name] for c in chunks)), names, freeze)
    return model


@torch.no_grad()
def read_flat(model: nn.Module, read: Callable[[Any], Tensor]) -> np.ndarray:
    """Concatenate the boolean ``read(supermask)`` of every supermask of `model`."""
    masks = supermasks(model)
    return flatten_masks({name: read(mask) for name, mask in masks.items()}, list(masks))


def reply(msg: Message, metrics: dict[str, float | int],
          arrays: dict[str, ArrayRecord] | None = None) -> Message:
    """Build the reply to `msg` carrying `arrays` and a MetricRecord of `metrics`."""
    values: dict[str, int | float | list[int] | list[float]] = dict(metrics)
    content = RecordDict({**(arrays or {}), METRICS: MetricRecord(values)})
    return Message(content, reply_to=msg)


def num_examples(msg: Message) -> int:
    """The positive integer `num-examples` a reply declares; raise ReplyError."""
    records = msg.content.metric_records
    if METRICS not in records or NUM_EXAMPLES not in records[METRICS]:
        raise ReplyError(NUM_EXAMPLES, "missing from the reply's metrics")
    value = records[METRICS][NUM_EXAMPLES]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_EXAMPLES:
        raise ReplyError(NUM_EXAMPLES, f"must be an int in [1, {MAX_EXAMPLES}], got {value!r}")
    return value
