"""ClientApp body: this node's data and model, then the method's handler."""

from __future__ import annotations

import hashlib
import time
from types import ModuleType

import torch
from flwr.app import Context, Message

from fedmask import config as run_config
from fedmask.methods.fedavg import client as fedavg
from fedmask.methods.fedpm import client as fedpm
from fedmask.methods.fedsparsify import client as fedsparsify
from fedmask.methods.hidenseek import client as hidenseek
from fedmask.methods.mpfl import client as mpfl
from fedmask.methods.ssfl import client as ssfl
from fedmask.data.datasets import DATASETS, ClientData, client_data
from fedmask.data.device import device_data
from fedmask.nn.models import build_model
from fedmask.wire.records import CLIENT_SECONDS, CONFIG, METRICS

HANDLERS: dict[str, ModuleType] = {"hidenseek": hidenseek, "fedpm": fedpm, "mpfl": mpfl,
                                   "ssfl": ssfl, "fedsparsify": fedsparsify, "fedavg": fedavg}
STATEFUL = ("mpfl", "ssfl", "fedsparsify")  # handlers that keep node state between rounds (context.state)


def message_seed(seed: int, server_round: int, partition_id: int, phase: str) -> int:
    """Seed of a message's local randomness (shuffling, mask samples): a function of
    the run seed, the round, the partition and the phase only, so a run gives the
    same result in simulation and deployment, whatever node or order serves it."""
    key = f"{seed}:{server_round}:{partition_id}:{phase}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def node_data(cfg: dict, node_config: dict) -> tuple[ClientData, int]:
    """This node's data and partition id: its own `data-path` folder when the node
    config names one (partition id 0 unless given), else its partition of `data-root`."""
    partition = int(node_config.get("partition-id", 0))
    common = (cfg["batch-size"], cfg["test-fraction"], cfg["train-limit"])
    if node_config.get("data-path"):
        return device_data(str(node_config["data-path"]), cfg["dataset"], *common,
                           seed=message_seed(cfg["seed"], 0, partition, "data")), partition
    return client_data(cfg["dataset"], cfg["data-root"], partition,
                       int(node_config["num-partitions"]), cfg["partition"], cfg["alpha"],
                       cfg["seed"], *common), partition


def handle(msg: Message, context: Context, phase: str) -> Message:
    """Answer a ``train``, ``evaluate`` or ``query`` message for the configured method;
    the reply's metrics gain ``client-s``, the seconds the handler took."""
    cfg = run_config.parse(context.run_config)
    spec = DATASETS[cfg["dataset"]]
    data, partition = node_data(cfg, context.node_config)
    model = build_model(cfg["model"], spec.num_classes, spec.in_channels, spec.image_size)
    server_round = int(msg.content.config_records[CONFIG].get("server-round", 0))
    torch.manual_seed(message_seed(cfg["seed"], server_round, partition, phase))
    state = {"state": context.state} if cfg["method"] in STATEFUL else {}
    start = time.perf_counter()
    reply = getattr(HANDLERS[cfg["method"]], phase)(msg, model, data, **state)
    reply.content.metric_records[METRICS][CLIENT_SECONDS] = time.perf_counter() - start
    return reply
