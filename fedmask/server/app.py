"""ServerApp body: build the chosen method's strategy, run it, write results.json."""

from __future__ import annotations

import random
import time
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from safetensors.torch import save
from torch import nn
from torch.utils.data import DataLoader

from fedmask import config as run_config
from fedmask.client.settings import LocalSettings
from fedmask.data.datasets import central_test, central_validation, get_spec
from fedmask.methods import REGISTRY
from fedmask.nn.models import num_prunable
from fedmask.nn.placement import Placement
from fedmask.nn.portable_random import GENERATOR
from fedmask.nn.seeded import GENERATOR_KEY
from fedmask.server import checkpoint
from fedmask.server.accounting import MeasuringGrid
from fedmask.server.checkpoint import CHECKPOINT, Checkpointable
from fedmask.server.results import RoundRecorder, arrays_sha256, library_versions, write_json
from fedmask.server.rounds import run_rounds

MODEL_FILE = "model.safetensors"

if TYPE_CHECKING:  # strategies are imported through the method registry, never here
    from strategies.base import MethodStrategy


def _sampling(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"fraction_train": cfg["fraction-train"],
            "fraction_evaluate": cfg["fraction-evaluate"],
            "min_train_nodes": cfg["min-nodes"], "min_evaluate_nodes": cfg["min-nodes"],
            "min_available_nodes": cfg["min-nodes"]}


def build_strategy(cfg: dict[str, Any], model: nn.Module, input_shape: tuple[int, ...]
                   ) -> MethodStrategy:
    """The configured method's strategy, its arguments taken from the run config."""
    method = REGISTRY[cfg["method"]]
    strategy: MethodStrategy = method.strategy_class()(
        model=model, input_shape=input_shape, seed=cfg["seed"], init=cfg["init"],
        **method.strategy_arguments(cfg), **_sampling(cfg))
    return strategy


def save_model(strategy: MethodStrategy, arrays: ArrayRecord, cfg: dict[str, Any],
               folder: Path) -> dict[str, int]:
    """Write ``model.safetensors``; return its measured size and that of the plain
    float32 state dict (serialized the same way) for results.json."""
    spec = get_spec(cfg["dataset"])
    dataset = {"name": spec.name, "num_classes": spec.num_classes,
               "in_channels": spec.in_channels, "image_size": spec.image_size,
               "mean": list(spec.mean), "std": list(spec.std)}
    size = strategy.save_model(folder / MODEL_FILE, arrays, architecture=cfg["model"],
                               dataset=dataset)
    plain = strategy.global_model(arrays).state_dict()
    log(INFO, "[fedmask] model written to %s (%d bytes)", folder / MODEL_FILE, size)
    return {"model_file_bytes": size,
            "float32_state_dict_bytes": len(save({k: v.contiguous() for k, v in plain.items()}))}


def central_loader(cfg: dict[str, Any]) -> DataLoader:
    """What the central accuracy is measured on: the test split, or with
    `validation-size` the validation set held out from the training split."""
    if cfg["validation-size"]:
        try:
            return central_validation(cfg["dataset"], cfg["data-root"], 256,
                                      cfg["validation-size"], cfg["seed"])
        except ValueError as error:
            raise run_config.ConfigError(str(error)) from None
    return central_test(cfg["dataset"], cfg["data-root"], 256, cfg["test-limit"])


def placement(cfg: dict[str, Any]) -> Placement:
    """Where the central evaluation runs; ConfigError naming ``device`` when this
    process cannot use it."""
    try:
        return Placement.from_config(cfg)
    except ValueError as error:
        raise run_config.ConfigError(str(error)) from None


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


def _resume(path: Path, cfg: dict[str, Any], strategy: Checkpointable,
            recorder: RoundRecorder) -> tuple[int, ArrayRecord]:
    """Restore strategy, results and RNGs from the checkpoint at `path`; return the
    next round and the global arrays."""
    if not path.exists():
        raise run_config.ConfigError(f"resume: no checkpoint at {path}")
    saved = checkpoint.load(path)
    if saved.document.get(GENERATOR_KEY) != GENERATOR:
        raise run_config.ConfigError(
            f"resume: {GENERATOR_KEY}: the checkpoint at {path} was written with "
            f"{saved.document.get(GENERATOR_KEY, 'torch generator (unnamed)')!r}, this "
            f"fedmask computes {GENERATOR!r}: its seeded weights differ; start a new run")
    changed = sorted(k for k in cfg if k not in run_config.RESUME_FREE
                     and saved.document["config"].get(k) != cfg[k])
    if changed:
        raise run_config.ConfigError(f"resume: the checkpoint at {path} was written with "
                                     f"other values of {changed}")
    strategy.load_state_dict(saved.strategy)
    recorder.restore(saved.document["results"])
    checkpoint.restore_rng(saved)
    log(INFO, "[fedmask] resuming after round %d from %s", saved.server_round, path)
    return saved.server_round + 1, saved.arrays


def run(grid: Grid, context: Context) -> Path:
    """Run the method `context.run_config` names (or resume it from its checkpoint);
    return the results.json path."""
    cfg = run_config.parse(context.run_config)
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    spec = get_spec(cfg["dataset"])
    model = run_config.run_model(cfg)
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    strategy = build_strategy(cfg, model, input_shape)
    folder, timeout = out_dir(cfg), cfg["round-timeout-s"]
    test = central_loader(cfg)  # a bad validation-size or device fails before nodes wait
    place = placement(cfg)
    wait_for_nodes(grid, cfg["min-nodes"], cfg["node-wait-s"])
    measuring = MeasuringGrid(grid)
    samples = cfg["eval-samples"] if cfg["method"] == "fedpm" else 0
    recorder = RoundRecorder(measuring.ledger, strategy.evaluation_model, test,
                             cfg["num-server-rounds"], samples, place)
    log(INFO, "Starting %s strategy:", type(strategy).__name__)
    strategy.summary()
    first, strategy.round_timeout = 1, timeout
    if cfg["resume"]:
        first, arrays = _resume(folder / CHECKPOINT, cfg, strategy, recorder)
    else:
        arrays = strategy.prepare(measuring, timeout, None)
        recorder.start(arrays, strategy.rejected.get(0, []))

    def after_round(server_round: int, arrays: ArrayRecord, train_metrics: MetricRecord | None,
                    evaluate_metrics: MetricRecord | None, aggregate_s: float) -> None:
        recorder.record(server_round, arrays, train_metrics, evaluate_metrics,
                        strategy.rejected.get(server_round, []), aggregate_s,
                        strategy.drain_resent_bytes())
        checkpoint.save(folder / CHECKPOINT, server_round, strategy.state_dict(), arrays,
                        {"config": cfg, "results": recorder.state(), GENERATOR_KEY: GENERATOR})

    settings = LocalSettings(cfg["local-epochs"], cfg["lr"], cfg["optimizer"],
                             cfg["momentum"], cfg["personal-epochs"], cfg["min-local-steps"],
                             cfg["loss"], cfg["personal-tuning"], cfg["personal-lr"]).to_config()
    final = run_rounds(strategy, measuring, arrays, range(first, cfg["num-server-rounds"] + 1),
                       timeout, settings, settings, after_round)
    header = {"method": cfg["method"], "dataset": cfg["dataset"], "model": cfg["model"],
              "num_params": num_prunable(model), "density": strategy.kept_fraction,
              "seed": cfg["seed"], "run_id": context.run_id,
              "config": cfg, "resumed_after_round": first - 1, "versions": library_versions(),
              "final_arrays_sha256": arrays_sha256(final), **save_model(strategy, final, cfg,
                                                                        folder)}
    path = folder / "results.json"
    write_json(path, recorder.results(header))
    log(INFO, "[fedmask] results written to %s", path)
    return path
