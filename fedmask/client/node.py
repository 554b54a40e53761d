"""ClientApp body: this node's data and model, then the method's handler."""

from __future__ import annotations

import hashlib
from types import ModuleType

import torch
from flwr.app import Context, Message

from fedmask import config as run_config
from fedmask.client import fedavg, fedpm, hidenseek
from fedmask.data import DATASETS, client_data
from fedmask.models import build_model
from fedmask.protocol import CONFIG

HANDLERS: dict[str, ModuleType] = {"hidenseek": hidenseek, "fedpm": fedpm, "fedavg": fedavg}


def message_seed(seed: int, server_round: int, partition_id: int, phase: str) -> int:
    """Seed of a message's local randomness (shuffling, mask samples): a function of
    the run seed, the round, the partition and the phase only, so a run gives the
    same result in simulation and deployment, whatever node or order serves it."""
    key = f"{seed}:{server_round}:{partition_id}:{phase}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def handle(msg: Message, context: Context, phase: str) -> Message:
    """Answer a ``train`` or ``evaluate`` message for the configured method."""
    cfg = run_config.parse(context.run_config)
    spec = DATASETS[cfg["dataset"]]
    partition = int(context.node_config["partition-id"])
    data = client_data(
        cfg["dataset"], cfg["data-root"], partition,
        int(context.node_config["num-partitions"]), cfg["partition"], cfg["alpha"],
        cfg["seed"], cfg["batch-size"], cfg["test-fraction"], cfg["train-limit"])
    model = build_model(cfg["model"], spec.num_classes, spec.in_channels, spec.image_size)
    server_round = int(msg.content.config_records[CONFIG].get("server-round", 0))
    torch.manual_seed(message_seed(cfg["seed"], server_round, partition, phase))
    return getattr(HANDLERS[cfg["method"]], phase)(msg, model, data)
