"""The client side of every fedmask method, around the user's own training loop.

A fedmask strategy names its method in every message (``fedmask-method``), so
one ClientApp serves all six. On a train message::

    net = fedmask.client.train_module(msg, Net(), context.state)
    fedmask.client.report_classes(msg, net, trainloader)  # HideNseek's class-bias
    loss = train(net, trainloader, epochs, lr, device)       # the project's own loop
    return fedmask.client.train_reply(msg, net, len(trainloader.dataset), {"train_loss": loss})

``net.parameters()`` are exactly what the method trains (supermask scores, or
the weights of a masked net whose pruned positions the parametrisation holds
at zero). On an evaluate message, :func:`eval_module` gives a plain module
(masks folded into ordinary weights, eval mode) for the project's own
``test()``. SSFL's saliency query is answered by :func:`query_reply`.
:func:`fedmask.client.app.client_app` builds a whole ClientApp from these.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, MetricRecord, RecordDict
from torch import nn

from fedmask.client.settings import LocalSettings
from fedmask.methods import METHOD_KEY, Method, get_method
from fedmask.methods.fedavg.client import ARRAYS
from fedmask.nn.batches import as_pairs
from fedmask.nn.class_bias import class_stats, layer_bias, with_offset
from fedmask.nn.supermask import fold
from fedmask.wire.class_bias import CLASS_STATS, offset_of
from fedmask.wire.held import restore
from fedmask.wire.records import CONFIG, NUM_EXAMPLES, Encoder, config_value, reply


@dataclass
class _Pending:
    """What :func:`train_reply` needs of a module :func:`train_module` returned."""

    message_id: str
    encode: Encoder
    records: dict[str, MetricRecord] = field(default_factory=dict)  # class statistics


_PENDING: weakref.WeakKeyDictionary[nn.Module, _Pending] = weakref.WeakKeyDictionary()


def _with_examples(num_examples: int, metrics: Mapping[str, float] | None
                   ) -> dict[str, float | int]:
    """``num-examples`` first, then `metrics` (which cannot override it)."""
    out: dict[str, float | int] = {NUM_EXAMPLES: int(num_examples), **(metrics or {})}
    out[NUM_EXAMPLES] = int(num_examples)
    return out


def method_of(msg: Message) -> Method:
    """The fedmask method a message belongs to (``fedmask-method`` in its config;
    a message of Flower's own FedAvg, with its ``arrays`` record, is ``fedavg``)."""
    config = msg.content.config_records.get(CONFIG)
    if config is not None and METHOD_KEY in config:
        return get_method(str(config[METHOD_KEY]))
    if ARRAYS in msg.content.array_records:
        return get_method("fedavg")
    raise ValueError(f"{CONFIG}: the message names no fedmask method ({METHOD_KEY!r}); "
                     "is the ServerApp running a fedmask strategy?")


def restore_state(msg: Message, state: RecordDict, model: nn.Module) -> None:
    """Rebuild the global state a lean message codes against what this node holds
    (:func:`fedmask.wire.held.restore`, with the method's coding context if it has
    one, computed from `model` only when needed)."""
    hooks = method_of(msg).client_module()
    context = getattr(hooks, "downlink_context", None)  # a method without one codes without
    restore(msg, state, None if context is None else lambda: context(msg, model))


def message_lr(msg: Message) -> float | None:
    """The ``lr`` of the message's config (None where it names none)."""
    config = msg.content.config_records.get(CONFIG)
    return None if config is None or "lr" not in config else config_value(config, "lr", float)


def train_module(msg: Message, model: nn.Module, state: RecordDict, *,
                 lr: float | None = None) -> nn.Module:
    """`model` (a fresh instance of the project's class) set up for this round's
    training: train its ``parameters()`` with any loop and optimiser, then call
    :func:`train_reply`.

    `state` is the node's ``context.state``: masked methods keep their mask there,
    the mask methods the global state the server codes its messages against.
    `lr` is the learning rate your loop trains with (default: the message's
    ``lr``): HideNseek and FedPM scale their scores by it, so that SGD (with or
    without momentum) and Adam train them alike at any rate."""
    restore_state(msg, state, model)
    lr = message_lr(msg) if lr is None else lr
    net, encode = method_of(msg).client_module().train_module(msg, model, state, lr)
    _PENDING[net] = _Pending(msg.metadata.message_id, encode)
    return net


def _pending(msg: Message, model: nn.Module) -> _Pending:
    pending = _PENDING.get(model)
    if pending is None or pending.message_id != msg.metadata.message_id:
        raise ValueError("model: not the module fedmask.client.train_module returned "
                         "for this message")
    return pending


def report_classes(msg: Message, model: nn.Module, trainloader: Iterable[Any]) -> None:
    """Before your loop trains `model` (the module :func:`train_module` returned),
    one pass over `trainloader` (tuple or dict batches, on the model's device)
    gives the class statistics :func:`train_reply` sends where the method learns
    per-class logit offsets (HideNseek's ``class-bias``, its default; from round
    2, when the global model is a voted one): per class held, the examples and
    the mean softmax at the global model. Elsewhere it reads nothing. Without it
    the server logs that the offsets learn from other clients only."""
    pending = _pending(msg, model)
    found = offset_of(msg)
    if found is not None and found[1] is not None:  # from round 2: a voted model
        layer, bias = found
        stats = class_stats(model, trainloader, bias, layer_bias(model, layer).numel())
        pending.records[CLASS_STATS] = stats.record()


def train_reply(msg: Message, model: nn.Module, num_examples: int,
                metrics: Mapping[str, float] | None = None) -> Message:
    """The reply to train message `msg`: what the method sends of the trained `model`
    (the module :func:`train_module` returned), `num_examples` and `metrics`, with
    the class statistics :func:`report_classes` took."""
    pending = _pending(msg, model)
    del _PENDING[model]
    answer = reply(msg, _with_examples(num_examples, metrics), pending.encode(model.cpu()))
    for name, record in pending.records.items():
        answer.content[name] = record
    return answer


def eval_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global model of evaluate message `msg` as a plain module: `model`'s
    class with ordinary weights (masks folded in), eval mode."""
    return fold(global_module(msg, model, state))


def global_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """The global model of evaluate message `msg` in the method's own form (masks
    attached, eval mode), per-class offsets in its output layer's bias."""
    restore_state(msg, state, model)
    return with_offset(msg, method_of(msg).client_module().eval_module(msg, model, state))


def personal_module(msg: Message, model: nn.Module, state: RecordDict) -> nn.Module:
    """What personal fine-tuning trains, from `model` (a fresh instance): the global
    network as a plain module whose weights all train (``personal-tuning =
    "weights"``, the default), or the module a round trains (``"training"``)."""
    if LocalSettings.from_message(msg).tunes_weights:
        return eval_module(msg, model, state)
    return train_module(msg, model, state)


def eval_reply(msg: Message, num_examples: int, metrics: Mapping[str, float]) -> Message:
    """The reply to evaluate message `msg`: `metrics` and `num_examples`."""
    return reply(msg, _with_examples(num_examples, metrics))


def query_reply(msg: Message, model: nn.Module, trainloader: Any,
                state: RecordDict, num_examples: int | None = None) -> Message:
    """The reply to a query message (SSFL's saliency before round 1, HideNseek's
    class report with ``class-bias-report = "voted"``), computed on
    `trainloader`'s batches (tuples or dicts, see :mod:`fedmask.nn.batches`);
    `num_examples` defaults to the size of the loader's dataset."""
    method = method_of(msg)
    hooks = method.client_module()
    if not hasattr(hooks, "query"):
        raise ValueError(f"{method.name} sends no query messages")
    count = len(trainloader.dataset) if num_examples is None else num_examples
    restore_state(msg, state, model)
    return reply(msg, {NUM_EXAMPLES: int(count)},
                 hooks.query(msg, model, as_pairs(trainloader), state))
