"""Per-round records (central accuracy, measured bytes, time) and results.json."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Result
from torch import nn
from torch.utils.data import DataLoader

from fedmask import training
from fedmask.accounting import Ledger, Transfer

MB = 1e6


def _traffic(transfers: list[Transfer], message_type: str) -> dict[str, Any]:
    """Bytes per direction and per node for one message type."""
    mine = [t for t in transfers if t.message_type == message_type]
    clients: dict[int, dict[str, Any]] = {}
    for t in mine:
        entry = clients.setdefault(t.node_id, {"node_id": t.node_id, "bytes_up": 0,
                                               "bytes_down": 0, "failed": False})
        entry[f"bytes_{t.direction}"] += t.num_bytes
        entry["failed"] |= t.failed
    for entry in clients.values():
        entry["failed"] |= entry["bytes_up"] == 0  # sent to, never answered
    return {
        "bytes_up": sum(t.num_bytes for t in mine if t.direction == "up"),
        "bytes_down": sum(t.num_bytes for t in mine if t.direction == "down"),
        "clients": list(clients.values()),
    }


class RoundRecorder:
    """Flower ``evaluate_fn``: central evaluation plus the round's measured traffic.

    Called by ``Strategy.start`` before round 1 (round 0) and after each round.
    With `eval_samples` > 0 it also scores that many masks sampled from the
    global model's Bernoulli supermasks (``sampled-accuracy``).
    """

    def __init__(self, ledger: Ledger, global_model: Callable[[ArrayRecord], nn.Module],
                 test_loader: DataLoader, num_rounds: int, eval_samples: int = 0) -> None:
        self.ledger, self.global_model = ledger, global_model
        self.test_loader, self.num_rounds = test_loader, num_rounds
        self.eval_samples = eval_samples
        self.rounds: list[dict[str, Any]] = []
        self.initial: dict[str, float] = {}
        self._last = time.monotonic()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = training.evaluate_metrics(self.global_model(arrays), self.test_loader,
                                            self.eval_samples)
        transfers = self.ledger.drain()
        now = time.monotonic()
        wall, self._last = now - self._last, now
        if server_round == 0:  # traffic before round 1: SSFL's saliency queries
            query = _traffic(transfers, MessageType.QUERY)
            self.initial = {**metrics, "bytes_up": query["bytes_up"],
                            "bytes_down": query["bytes_down"]}
        else:
            self._record(server_round, transfers, metrics, wall)
        return MetricRecord(metrics)

    def _record(self, server_round: int, transfers: list[Transfer], metrics: dict[str, float],
                wall: float) -> None:
        train = _traffic(transfers, MessageType.TRAIN)
        evaluate = _traffic(transfers, MessageType.EVALUATE)
        accuracy, loss = metrics["accuracy"], metrics["loss"]
        record = {
            "round": server_round, **metrics,
            "bytes_up": train["bytes_up"], "bytes_down": train["bytes_down"],
            "eval_bytes_up": evaluate["bytes_up"], "eval_bytes_down": evaluate["bytes_down"],
            "num_clients": sum(not c["failed"] for c in train["clients"]),
            "failed_clients": [c["node_id"] for c in train["clients"] if c["failed"]],
            "clients": train["clients"], "wall_s": wall,
        }
        self.rounds.append(record)
        log(INFO, "[fedmask] round %d/%d | accuracy %.4f | loss %.4f | up %.3f MB | "
            "down %.3f MB | clients %d | %.1f s", server_round, self.num_rounds, accuracy,
            loss, record["bytes_up"] / MB, record["bytes_down"] / MB, record["num_clients"], wall)

    def results(self, header: dict[str, Any], result: Result) -> dict[str, Any]:
        """results.json content: `header`, the rounds, and the clients' aggregated metrics."""
        for record in self.rounds:
            rnd = record["round"]
            record["train_metrics"] = dict(result.train_metrics_clientapp.get(rnd, {}))
            record["client_eval_metrics"] = dict(result.evaluate_metrics_clientapp.get(rnd, {}))
        return {**header, "initial": self.initial, "rounds": self.rounds}


def arrays_sha256(arrays: ArrayRecord) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of `arrays` (in key order)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = arrays[key].numpy()
        digest.update(f"{key}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
