"""A whole fedmask ClientApp from a project's own model, data, train and test code."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from torch import nn

from fedmask.client import (
    eval_module,
    eval_reply,
    message_lr,
    method_of,
    personal_module,
    query_reply,
    report_classes,
    train_module,
    train_reply,
)
from fedmask.client.settings import LocalSettings
from fedmask.nn.supermask import fold
from fedmask.wire.records import CONFIG, config_value

Loaders = tuple[Any, Any]  # (trainloader, testloader)
TrainFn = Callable[[nn.Module, Any, int, float, torch.device], Any]
TestFn = Callable[[nn.Module, Any, torch.device], tuple[float, float]]


def pick_device(name: str = "auto") -> torch.device:
    """`name` as a torch device; ``auto``: CUDA when this process sees a GPU, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def local_epochs(msg: Message, context: Context, batches_per_epoch: int) -> int:
    """``local-epochs`` of the message's config (else of the run config, else 1),
    raised to the whole epochs that make ``min-local-steps`` batches."""
    config = msg.content.config_records[CONFIG]
    epochs = config_value(config, "local-epochs", int,
                          config_value(context.run_config, "local-epochs", int, 1))
    min_steps = config_value(config, "min-local-steps", int, 0)
    return max(epochs, math.ceil(min_steps / max(batches_per_epoch, 1)))


def learning_rate(msg: Message) -> float:
    """``lr`` of the message's config (the strategy's default unless the ServerApp set one)."""
    lr = message_lr(msg)
    if lr is None:
        raise ValueError("lr: the train config names no learning rate")
    return lr


def client_app(*, model: Callable[[], nn.Module], load_data: Callable[[Context], Loaders],
               train: TrainFn, test: TestFn, device: str = "auto") -> ClientApp:
    """A ClientApp that runs any fedmask method with the project's own code.

    Parameters
    ----------
    model : Callable[[], nn.Module]
        Builds a fresh instance of the project's model (e.g. the class ``Net``).
    load_data : Callable[[Context], tuple]
        This node's ``(trainloader, testloader)``; batches may be tuples or dicts.
    train : Callable
        ``train(net, trainloader, epochs, lr, device)``, returning the mean loss (or None).
    test : Callable
        ``test(net, testloader, device)`` returning ``(loss, accuracy)``.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    Notes
    -----
    Epochs come from the message's ``local-epochs`` (else the run config's; raised
    to whole epochs of at least ``min-local-steps`` batches when it names any), the
    learning rate from its ``lr``. A method with personalised evaluation
    (HideNseek and FedAvg, ``personal-epochs`` in the evaluate config) also
    fine-tunes with `train` and reports ``personal-accuracy``: the global network's
    weights at the message's ``personal-lr`` (``personal-tuning = "weights"``), or
    what a round trains at its ``lr`` (``"training"``).
    """
    app = ClientApp()
    where = pick_device(device)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        trainloader, _ = load_data(context)
        net = train_module(msg, model(), context.state)
        report_classes(msg, net, trainloader)
        epochs = local_epochs(msg, context, len(trainloader))
        loss = train(net, trainloader, epochs, learning_rate(msg), where)
        metrics = {} if loss is None else {"train-loss": float(loss)}
        return train_reply(msg, net, len(trainloader.dataset), metrics)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        trainloader, testloader = load_data(context)
        loss, accuracy = test(eval_module(msg, model(), context.state), testloader, where)
        metrics = {"loss": float(loss), "accuracy": float(accuracy)}
        personal = config_value(msg.content.config_records[CONFIG], "personal-epochs", int, 0)
        if method_of(msg).personalised and personal > 0:
            settings = LocalSettings.from_message(msg)
            net = personal_module(msg, model(), context.state)
            lr = settings.personal_lr if settings.tunes_weights else learning_rate(msg)
            train(net, trainloader, personal, lr, where)
            metrics["personal-accuracy"] = float(test(fold(net), testloader, where)[1])
        return eval_reply(msg, len(testloader.dataset), metrics)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        trainloader, _ = load_data(context)
        return query_reply(msg, model(), trainloader, context.state)

    return app
