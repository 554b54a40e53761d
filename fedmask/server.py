"""ServerApp body: build the chosen method's strategy, run it, write results.json."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from fedmask import config as run_config
from fedmask.accounting import MeasuringGrid
from fedmask.client.settings import LocalSettings
from fedmask.data import DATASETS, central_test
from fedmask.models import build_model, num_prunable, seeded_init
from fedmask.results import RoundRecorder, arrays_sha256, write_json
from strategies import MPFL, SSFL, FedPM, FedSparsify, HideNseek

Setup = tuple[Strategy, ArrayRecord, Callable[[ArrayRecord], nn.Module], float]


def _sampling(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"fraction_train": cfg["fraction-train"],
            "fraction_evaluate": cfg["fraction-evaluate"],
            "min_train_nodes": cfg["min-nodes"], "min_evaluate_nodes": cfg["min-nodes"],
            "min_available_nodes": cfg["min-nodes"]}


def _hidenseek(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]) -> Setup:
    strategy = HideNseek(model, input_shape, cfg["seed"], cfg["init"], cfg["density"],
                         cfg["synflow-iterations"], cfg["prune-scope"], cfg["mask-coding"],
                         **_sampling(cfg))
    density = strategy.signs.size / strategy.prune.size
    return strategy, strategy.global_arrays(), strategy.global_model, density


def _fedpm(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]) -> Setup:
    del input_shape
    strategy = FedPM(model, cfg["seed"], cfg["init"], cfg["prior-reset"],
                     cfg["weighted-aggregation"], cfg["theta-format"], cfg["estimator"],
                     cfg["eval-samples"], cfg["mask-coding"], **_sampling(cfg))
    return strategy, strategy.global_arrays(), strategy.global_model, 1.0


def _mpfl(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]) -> Setup:
    del input_shape
    strategy = MPFL(model, cfg["seed"], cfg["init"], cfg["density"], cfg["prune-rate"],
                    cfg["prune-structure"], cfg["mask-coding"], **_sampling(cfg))
    return (strategy, strategy.global_arrays(), strategy.global_model,
            strategy.target / strategy.mask.size)


def _ssfl(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]) -> Setup:
    del input_shape
    strategy = SSFL(model, cfg["seed"], cfg["init"], cfg["density"], cfg["saliency-batches"],
                    cfg["saliency-format"], cfg["saliency-weighted"], **_sampling(cfg))
    return strategy, ArrayRecord(), strategy.global_model, strategy.keep / strategy.mask.size


def _fedsparsify(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]) -> Setup:
    del input_shape
    strategy = FedSparsify(model, cfg["num-server-rounds"], cfg["seed"], cfg["init"],
                           cfg["fedsparsify-variant"], cfg["final-sparsity"], cfg["prune-start"],
                           cfg["prune-every"], cfg["nnz-average"], cfg["mask-coding"],
                           **_sampling(cfg))
    return strategy, strategy.global_arrays(), strategy.global_model, 1.0 - cfg["final-sparsity"]


def _fedavg(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]) -> Setup:
    del input_shape
    seeded_init(model, cfg["seed"], cfg["init"])

    def global_model(arrays: ArrayRecord) -> nn.Module:
        net = copy.deepcopy(model)
        net.load_state_dict(arrays.to_torch_state_dict())
        return net

    return FedAvg(**_sampling(cfg)), ArrayRecord(model.state_dict()), global_model, 1.0


SETUPS: dict[str, Callable[..., Setup]] = {"hidenseek": _hidenseek, "fedpm": _fedpm,
                                           "mpfl": _mpfl, "ssfl": _ssfl,
                                           "fedsparsify": _fedsparsify, "fedavg": _fedavg}


def wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> None:
    """Fail fast, naming ``min-nodes``, if fewer than `count` nodes connect in time."""
    deadline = time.monotonic() + timeout_s
    while (connected := len(list(grid.get_node_ids()))) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"min-nodes: {connected} node(s) connected after {timeout_s:.0f} s, "
                f"{count} required; start more SuperNodes or lower min-nodes")
        time.sleep(1.0)


def out_dir(cfg: dict[str, Any]) -> Path:
    """Absolute output folder: `out-dir`, or ~/fedmask-results/<method>-<time>."""
    if cfg["out-dir"]:
        return Path(cfg["out-dir"]).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.home() / "fedmask-results" / f"{cfg['method']}-{stamp}"


def run(grid: Grid, context: Context) -> Path:
    """Run the method `context.run_config` names; return the results.json path."""
    cfg = run_config.parse(context.run_config)
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    spec = DATASETS[cfg["dataset"]]
    model = build_model(cfg["model"], spec.num_classes, spec.in_channels, spec.image_size)
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    strategy, arrays, global_model, density = SETUPS[cfg["method"]](cfg, model, input_shape)
    wait_for_nodes(grid, cfg["min-nodes"], cfg["node-wait-s"])
    measuring = MeasuringGrid(grid)
    test = central_test(cfg["dataset"], cfg["data-root"], 256, cfg["test-limit"])
    samples = cfg["eval-samples"] if cfg["method"] == "fedpm" else 0
    recorder = RoundRecorder(measuring.ledger, global_model, test, cfg["num-server-rounds"],
                             samples)
    settings = LocalSettings(cfg["local-epochs"], cfg["lr"], cfg["optimizer"],
                             cfg["momentum"], cfg["personal-epochs"]).to_config()
    result = strategy.start(grid=measuring, initial_arrays=arrays,
                            num_rounds=cfg["num-server-rounds"],
                            timeout=cfg["round-timeout-s"], train_config=settings,
                            evaluate_config=settings, evaluate_fn=recorder)
    header = {"method": cfg["method"], "dataset": cfg["dataset"], "model": cfg["model"],
              "num_params": num_prunable(model), "density": density, "seed": cfg["seed"],
              "config": cfg, "final_arrays_sha256": arrays_sha256(result.arrays)}
    path = out_dir(cfg) / "results.json"
    write_json(path, recorder.results(header, result))
    log(INFO, "[fedmask] results written to %s", path)
    return path
