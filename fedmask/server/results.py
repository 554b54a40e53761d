"""Per-round records (central accuracy, measured bytes, time) and results.json."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from importlib import import_module
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MessageType, MetricRecord
from flwr.common.logger import log
from torch import nn
from torch.utils.data import DataLoader

from fedmask.nn import training
from fedmask.nn.placement import ON_CPU, Placement
from fedmask.server.accounting import Ledger, Transfer

MB = 1e6


def _traffic(transfers: list[Transfer], message_type: str) -> dict[str, Any]:
    """Bytes per direction and per node for one message type."""
    mine = [t for t in transfers if t.message_type == message_type]
    clients: dict[int, dict[str, Any]] = {}
    for t in mine:
        entry = clients.setdefault(t.node_id, {"node_id": t.node_id, "bytes_up": 0,
                                               "bytes_down": 0, "failed": False,
                                               "client_s": 0.0, "start_s": None})
        entry[f"bytes_{t.direction}"] += t.num_bytes
        entry["failed"] |= t.failed
        entry["client_s"] += t.client_s
        if t.start_s is not None:
            entry["start_s"] = t.start_s
    for entry in clients.values():
        entry["failed"] |= entry["bytes_up"] == 0  # sent to, never answered
    return {
        "bytes_up": sum(t.num_bytes for t in mine if t.direction == "up"),
        "bytes_down": sum(t.num_bytes for t in mine if t.direction == "down"),
        "array_bytes_up": sum(t.array_bytes for t in mine if t.direction == "up"),
        "array_bytes_down": sum(t.array_bytes for t in mine if t.direction == "down"),
        "clients": list(clients.values()),
    }


class RoundRecorder:
    """Central evaluation plus the measured traffic of every round, for results.json.

    :meth:`start` scores the initial model and the traffic before round 1,
    :meth:`record` each round after it ends. With `eval_samples` > 0 it also
    scores that many masks sampled from the global model's Bernoulli
    supermasks (``sampled-accuracy``). The evaluation runs at `place`.
    """

    def __init__(self, ledger: Ledger, global_model: Callable[[ArrayRecord], nn.Module],
                 test_loader: DataLoader, num_rounds: int, eval_samples: int = 0,
                 place: Placement = ON_CPU) -> None:
        self.ledger, self.global_model = ledger, global_model
        self.test_loader, self.num_rounds = test_loader, num_rounds
        self.eval_samples, self.place = eval_samples, place
        self.rounds: list[dict[str, Any]] = []
        self.initial: dict[str, Any] = {}
        self._last = time.monotonic()

    def _evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        return training.evaluate_metrics(self.global_model(arrays), self.test_loader,
                                         self.eval_samples, self.place.device,
                                         self.place.precision)

    def _wall(self) -> float:
        now = time.monotonic()
        wall, self._last = now - self._last, now
        return wall

    def start(self, arrays: ArrayRecord, rejected: list[dict[str, Any]] | None = None) -> None:
        """Score the initial model; count the traffic before round 1 (SSFL's query),
        its failed clients, its `rejected` replies and the seconds since this recorder
        was made (that exchange and the initial evaluation)."""
        query = _traffic(self.ledger.drain(), MessageType.QUERY)
        self.initial = {**self._evaluate(arrays), "bytes_up": query["bytes_up"],
                        "bytes_down": query["bytes_down"],
                        "array_bytes_up": query["array_bytes_up"],
                        "array_bytes_down": query["array_bytes_down"],
                        "failed_clients": [c["node_id"] for c in query["clients"] if c["failed"]],
                        "rejected_clients": list(rejected or []), "wall_s": self._wall()}
        log(INFO, "[fedmask] initial accuracy %.4f", self.initial["accuracy"])

    def record(self, server_round: int, arrays: ArrayRecord, train_metrics: MetricRecord | None,
               evaluate_metrics: MetricRecord | None, rejected: list[dict[str, Any]],
               aggregate_s: float, resent_bytes: int = 0) -> None:
        """Score the global model after `server_round`; record the round's traffic
        (train, evaluate and query messages; its downlink split into what was new
        to the nodes and the `resent_bytes` sent again to nodes that had lost
        them), the clients' metrics, the failed and rejected clients and the
        seconds the server spent aggregating."""
        metrics = self._evaluate(arrays)
        transfers = self.ledger.drain()
        train = _traffic(transfers, MessageType.TRAIN)
        evaluate = _traffic(transfers, MessageType.EVALUATE)
        query = _traffic(transfers, MessageType.QUERY)  # HideNseek's class report
        record = {
            "round": server_round, **metrics,
            "bytes_up": train["bytes_up"], "bytes_down": train["bytes_down"],
            "array_bytes_up": train["array_bytes_up"],
            "array_bytes_down": train["array_bytes_down"],
            "eval_bytes_up": evaluate["bytes_up"], "eval_bytes_down": evaluate["bytes_down"],
            "query_bytes_up": query["bytes_up"], "query_bytes_down": query["bytes_down"],
            "down_new_bytes": (train["bytes_down"] + evaluate["bytes_down"]
                               + query["bytes_down"] - resent_bytes),
            "down_resent_bytes": resent_bytes,
            "num_clients": sum(not c["failed"] for c in train["clients"]) - len(rejected),
            "failed_clients": [c["node_id"] for c in train["clients"] if c["failed"]],
            "rejected_clients": rejected, "aggregated": train_metrics is not None,
            "clients": train["clients"], "aggregate_s": aggregate_s, "wall_s": self._wall(),
            "train_metrics": dict(train_metrics or {}),
            "client_eval_metrics": dict(evaluate_metrics or {}),
        }
        self.rounds.append(record)
        log(INFO, "[fedmask] round %d/%d | accuracy %.4f | loss %.4f | up %.3f MB | "
            "down %.3f MB | clients %d (failed %d, rejected %d) | %.1f s", server_round,
            self.num_rounds, metrics["accuracy"], metrics["loss"], record["bytes_up"] / MB,
            record["bytes_down"] / MB, record["num_clients"], len(record["failed_clients"]),
            len(rejected), record["wall_s"])

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the results so far."""
        return {"initial": self.initial, "rounds": self.rounds}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (a resumed run)."""
        self.initial, self.rounds = state["initial"], state["rounds"]
        self.ledger.drain()
        self._wall()

    def results(self, header: dict[str, Any]) -> dict[str, Any]:
        """results.json content: `header`, the initial evaluation and the rounds."""
        return {**header, "initial": self.initial, "rounds": self.rounds}


VERSIONED = ("torch", "torchvision", "flwr", "numpy")  # what a run's numbers depend on


def library_versions() -> dict[str, str]:
    """Python's and the numeric libraries' versions, with the build's tag (torch's
    ``+cu130``): the same code and seed give other figures under another torch
    build, so results.json records them."""
    return {"python": platform.python_version(),
            **{name: str(import_module(name).__version__) for name in VERSIONED}}


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
