"""fedmask's own ClientApp body: this node's data and model, fedmask's training
loop, and the method's hooks (the same ones :mod:`fedmask.client` offers users)."""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Mapping

import torch
from flwr.app import Context, Message, RecordDict
from torch import nn

from fedmask import config as run_config
from fedmask.client import (
    global_module,
    method_of,
    personal_module,
    query_reply,
    report_classes,
    train_module,
    train_reply,
)
from fedmask.client.settings import LocalSettings
from fedmask.client.startup import first_step_s
from fedmask.data.datasets import ClientData, LoaderOptions, client_data
from fedmask.data.device import device_data
from fedmask.nn import training
from fedmask.nn.placement import ON_CPU, Placement
from fedmask.wire.records import (
    CLIENT_SECONDS,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    START_SECONDS,
    config_value,
    reply,
)

EVAL_SAMPLES = "eval-samples"
BeforeReply = Callable[[Message, nn.Module], None]  # sees the trained module, may change it


def message_seed(seed: int, server_round: int, partition_id: int, phase: str) -> int:
    """Seed of a message's local randomness (shuffling, mask samples): a function of
    the run seed, the round, the partition and the phase only, so a run gives the
    same result in simulation and deployment, whatever node or order serves it."""
    key = f"{seed}:{server_round}:{partition_id}:{phase}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def node_data(cfg: dict, node_config: dict, place: Placement = ON_CPU
              ) -> tuple[ClientData, int]:
    """This node's data and partition id: its own `data-path` folder when the node
    config names one (partition id 0 unless given), else its partition of `data-root`;
    loaders with `loader-workers`, memory pinned for a CUDA `place` (`pin-memory`)."""
    partition = int(node_config.get("partition-id", 0))
    common = (cfg["batch-size"], cfg["test-fraction"], cfg["train-limit"])
    loading = LoaderOptions(cfg["loader-workers"],
                            cfg["pin-memory"] and place.device.type == "cuda")
    if node_config.get("data-path"):
        return device_data(str(node_config["data-path"]), cfg["dataset"], *common,
                           seed=message_seed(cfg["seed"], 0, partition, "data"),
                           loading=loading), partition
    return client_data(cfg["dataset"], cfg["data-root"], partition,
                       int(node_config["num-partitions"]), cfg["partition"], cfg["alpha"],
                       cfg["seed"], *common, cfg["validation-size"], loading), partition


def train(msg: Message, model: nn.Module, data: ClientData, state: RecordDict,
          place: Placement = ON_CPU, before_reply: BeforeReply | None = None) -> Message:
    """Train the method's module with fedmask's loop (on `place`); reply with what
    the method sends (of the module as `before_reply`, if given, leaves it)."""
    settings = LocalSettings.from_message(msg)
    net = train_module(msg, model, state)
    report_classes(msg, net, data.train)
    started = first_step_s()  # before the first step of a new process
    loss = settings.fit(net, data.train, settings.local_epochs, settings.min_local_steps,
                        place.device, place.precision, settings.logit_shift(data.label_counts))
    metrics = {"train-loss": loss}
    if started is not None:
        metrics[START_SECONDS] = started
    if data.num_test:  # the module this node trained, before the server aggregates
        metrics["trained-accuracy"] = training.evaluate(net, data.test, place.device,
                                                        place.precision)[1]
    if before_reply is not None:
        before_reply(msg, net)
    return train_reply(msg, net, data.num_train, metrics)


def evaluate(msg: Message, model: nn.Module, data: ClientData, state: RecordDict,
             place: Placement = ON_CPU) -> Message:
    """Local test loss and accuracy of the global model (on `place`); FedPM adds the
    mean over `eval-samples` sampled masks, HideNseek and FedAvg the accuracy after
    fine-tuning (`personal-tuning`) for `personal-epochs`, continued to
    `min-local-steps` batches."""
    config, method = msg.content.config_records[CONFIG], method_of(msg)
    settings = LocalSettings.from_message(msg)
    personal = method.personalised and settings.personal_epochs > 0
    fresh = copy.deepcopy(model) if personal else None  # eval_module changes `model`
    net = global_module(msg, model, state)
    samples = config_value(config, EVAL_SAMPLES, int, 0)
    metrics = {NUM_EXAMPLES: data.num_test, **training.evaluate_metrics(
        net, data.test, samples, place.device, place.precision)}
    if fresh is not None:  # on the round's loss; after the balanced loss the personal
        # model adds this client's log label distribution to its logits (FedRoD)
        shift = settings.logit_shift(data.label_counts)
        tuned = personal_module(msg, fresh, state)
        settings.personal().fit(tuned, data.train, settings.personal_epochs,
                                settings.min_local_steps, place.device, place.precision, shift)
        metrics["personal-accuracy"] = training.evaluate(tuned, data.test, place.device,
                                                         place.precision, shift)[1]
    return reply(msg, metrics)


def query(msg: Message, model: nn.Module, data: ClientData, state: RecordDict,
          place: Placement = ON_CPU) -> Message:
    """Answer a query (SSFL's saliency, HideNseek's class report) on this node's
    training data (on the CPU: what the server aggregates is exact)."""
    del place
    return query_reply(msg, model, data.train, state, data.num_train)


Handler = Callable[[Message, nn.Module, ClientData, RecordDict, Placement], Message]
HANDLERS: dict[str, Handler] = {"train": train, "evaluate": evaluate, "query": query}


def handle(msg: Message, context: Context, phase: str,
           handlers: Mapping[str, Handler] = HANDLERS) -> Message:
    """Answer a ``train``, ``evaluate`` or ``query`` message for the configured method
    (with `handlers`' handler of `phase`); the reply's metrics gain ``client-s``, the
    seconds the handler took."""
    cfg = run_config.parse(context.run_config)
    place = Placement.from_config(cfg, context.node_config)
    data, partition = node_data(cfg, context.node_config, place)
    model = run_config.run_model(cfg)
    server_round = config_value(msg.content.config_records[CONFIG], "server-round", int, 0)
    torch.manual_seed(message_seed(cfg["seed"], server_round, partition, phase))
    start = time.perf_counter()
    answer = handlers[phase](msg, model, data, context.state, place)
    answer.content.metric_records[METRICS][CLIENT_SECONDS] = time.perf_counter() - start
    return answer
