"""ClientApp body: this node's data and model, then the method's handler."""

from __future__ import annotations

from types import ModuleType

from flwr.app import Context, Message

from fedmask import config as run_config
from fedmask.client import fedavg, fedpm, hidenseek
from fedmask.data import DATASETS, client_data
from fedmask.models import build_model

HANDLERS: dict[str, ModuleType] = {"hidenseek": hidenseek, "fedpm": fedpm, "fedavg": fedavg}


def handle(msg: Message, context: Context, phase: str) -> Message:
    """Answer a ``train`` or ``evaluate`` message for the configured method."""
    cfg = run_config.parse(context.run_config)
    spec = DATASETS[cfg["dataset"]]
    data = client_data(
        cfg["dataset"], cfg["data-root"], int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]), cfg["partition"], cfg["alpha"],
        cfg["seed"], cfg["batch-size"], cfg["test-fraction"], cfg["train-limit"])
    model = build_model(cfg["model"], spec.num_classes, spec.in_channels, spec.image_size)
    return getattr(HANDLERS[cfg["method"]], phase)(msg, model, data)
