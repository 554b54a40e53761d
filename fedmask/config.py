"""Run configuration: every option, its default, and its validation.

Keys are kebab-case as in ``[tool.flwr.app.config]`` of ``pyproject.toml``; the
defaults there must match :data:`OPTIONS` (a test checks it). :data:`COMMON`
holds the options every method shares; each method adds its own
(:mod:`fedmask.methods`). A bad value fails at start with a
:class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fedmask.data import hub
from fedmask.data.datasets import DATASETS, PARTITIONS, get_spec
from fedmask.methods import REGISTRY
from fedmask.methods.masked.wire import VALUE_FORMATS
from fedmask.nn.models import INITS, MODELS, build_model
from fedmask.nn.placement import DEVICE_RULE, PRECISIONS, valid_device
from fedmask.nn.training import LOSSES, MIN_LOCAL_STEPS, OPTIMIZERS, PERSONAL_TUNINGS
from fedmask.options import Option, choice, flag, in_range, non_negative, positive
from fedmask.wire.coding import CODINGS

_AUTO = {"optimizer": "auto", "lr": 0.0, "init": "auto", "loss": "auto"}


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


COMMON: dict[str, Option] = {
    "method": choice("hidenseek", REGISTRY,
        help="the method to run"),
    "dataset": Option("fashion-mnist", bool,
                      f"one of {sorted(DATASETS)}, a Hugging Face dataset id or a local "
                      "dataset folder",
        help=("a torchvision dataset (under `data-root`), or any image classification dataset the"
              " Hugging Face `datasets` library reads: a hub id such as `\"uoft-cs/cifar10\"` or a "
              "local folder (`save_to_disk`, parquet/arrow files, an image folder); see \"Hugging "
              "Face datasets\"")),
    "image-column": Option("", rule="a column name",
        help=("Hugging Face datasets: the column holding the images; empty: the first `Image` "
              "column, else `img` or `image` (a built-in dataset refuses it)")),
    "label-column": Option("", rule="a column name",
        help=("Hugging Face datasets: the column holding class indices 0, 1, ... (int or "
              "`ClassLabel`); empty: the first `ClassLabel` column, else `label`, `labels` or "
              "`fine_label`")),
    "data-root": Option("~/.cache/fedmask/data", rule="a folder",
        help="where the dataset lives (see Data)"),
    "model": choice("cnn", sorted(MODELS),
        help=("bias-free architectures with non-affine norms (see `fedmask/nn/models.py`; `lenet`"
              " is the CNN of Flower's quickstart-pytorch)")),
    "init": choice("auto", ("auto", *INITS),
        help=("init scheme of the seeded weights; `auto`: signed constant for FedPM, Kaiming "
              "normal otherwise")),
    "partition": choice("iid", PARTITIONS,
        help=("how the training set is split over clients (flwr-datasets partitioners; "
              "`dirichlet-balanced` uses its self-balancing)")),
    "alpha": positive(0.5,
        help="Dirichlet concentration (`partition = \"dirichlet\"`)"),
    "seed": in_range(0, 0, 2**63 - 1,
        help="seed of weights, partition, sampling"),
    "num-server-rounds": positive(5,
        help="federated rounds"),
    "local-epochs": positive(1,
        help="local epochs per round"),
    "min-local-steps": non_negative(MIN_LOCAL_STEPS,
        help=("at least this many local batches per round (0: `local-epochs` only): a client "
              "whose `local-epochs` make fewer passes over its data again (fedmask's loop stops "
              "at that count; the ClientApp factory, whose `train` counts epochs, rounds up to "
              "whole epochs)")),
    "personal-epochs": non_negative(1,
        help=("HideNseek and FedAvg (FedAvg-FT): fine-tuning epochs for personalised accuracy, "
              "the evaluating clients' local test accuracy after fine-tuning the global model on "
              "their own data (the round's loss, continued to `min-local-steps` batches; 0 = "
              "off)")),
    "personal-tuning": choice("weights", PERSONAL_TUNINGS,
        help=("what personal fine-tuning trains: `weights`, the global network's weights as "
              "floats (HideNseek: w * P * g, a personal model that never leaves the client), by "
              "SGD with `momentum` at `personal-lr`, the same for FedAvg-FT; `training`, what a "
              "round trains at its optimiser and lr (HideNseek: its scores, METHODS.md's rule) "
              "(see \"Personalised accuracy: the weights fine-tuned\")")),
    "personal-lr": positive(0.005,
        help="learning rate of personal fine-tuning with `personal-tuning = \"weights\"`"),
    "batch-size": positive(64,
        help="local batch size"),
    "optimizer": choice("auto", ("auto", *OPTIMIZERS),
        help=("local optimiser; `auto`: Adam for mask scores (HideNseek, FedPM), SGD for dense "
              "weights")),
    "lr": non_negative(0.0,
        help=("learning rate; `0` = method default, chosen by the sweep (HideNseek 0.01, FedPM "
              "0.2, MPFL, SSFL, FedSparsify and FedAvg 0.02)")),
    "momentum": in_range(0.9, 0.0, 1.0,
        help="SGD momentum"),
    "loss": choice("auto", ("auto", *LOSSES),
        help=("fedmask's local loss: `cross-entropy`, or `balanced`, the cross-entropy of the "
              "logits plus the log of the client's own label distribution (balanced softmax, "
              "as FedLC calibrates logits under label skew), so a client does not train down "
              "the classes it lacks; `auto`: `balanced` for HideNseek, `cross-entropy` for the "
              "others; personalised fine-tuning trains on the same loss, and after `balanced` "
              "the personal model adds the client's log label distribution to its logits")),
    "fraction-train": in_range(1.0, 0.0, 1.0, lo_open=True,
        help="fraction of nodes sampled for training each round"),
    "fraction-evaluate": in_range(0.2, 0.0, 1.0,
        help="fraction of nodes sampled for client-side evaluation"),
    "min-nodes": positive(2,
        help="minimum nodes per round; the run fails fast if fewer connect"),
    "node-wait-s": positive(60.0,
        help="how long to wait for `min-nodes` nodes before failing"),
    "round-timeout-s": positive(3600.0,
        help=("how long a round waits for replies; also every message's TTL: on a SuperNode, a "
              "ClientApp still busy with a message just before then answers with an error "
              "(`fedmask.client.deadline`), so a hung ClientApp cannot hold its node past the "
              "round")),
    "density": in_range(0.5, 0.0, 1.0, lo_open=True,
        help=("fraction of prunable weights kept: HideNseek's SynFlow mask, MPFL's final "
              "consensus mask, SSFL's saliency mask")),
    "mask-coding": choice("entropy", CODINGS,
        help=("mask methods: how a client's mask goes up; `entropy` range-codes it (constriction)"
              " against a model both sides hold (under 1% of a client's round at the default "
              "config), see \"Entropy-coded masks\"")),
    "model-value-format": choice("float32", VALUE_FORMATS,
        help=("MPFL, SSFL, FedSparsify: precision of the kept values in the model file (`float16`"
              " halves them; loading reads them back as float32)")),
    "value-format": choice("float32", VALUE_FORMATS,
        help=("MPFL, SSFL, FedSparsify: precision of the kept values on the wire, both directions"
              " (`float16` halves them; clients train and the server averages in float32; the "
              "model file is float16 too). Measured on the `standard` profile: no accuracy cost "
              "(SSFL 0.8556 vs 0.8559, FedSparsify global 0.8595 vs 0.8596) for 0.52x the "
              "traffic")),
    "test-fraction": in_range(0.2, 0.0, 1.0, lo_open=True,
        help="share of each client's partition held out as its local test split"),
    "train-limit": non_negative(0,
        help="at most this many training examples per client (0 = all)"),
    "test-limit": non_negative(0,
        help="at most this many central test examples (0 = all)"),
    "validation-size": non_negative(0,
        help=("if > 0, this many training examples (a seeded random choice) are held out from "
              "every client and the central accuracy is measured on them instead of the test set "
              "(for tuning; `benchmarks/sweep.py` uses it)")),
    "out-dir": Option("", rule="a folder, or empty",
        help=("where `results.json`, `model.safetensors` and `checkpoint.npz` go; empty: "
              "`~/fedmask-results/<method>-<time>/`")),
    "resume": flag(False,
        help=("continue the run in `out-dir` from its `checkpoint.npz` (see \"Reliability and "
              "security\"); needs `out-dir` and the same config")),
    "device": Option("auto", valid_device, DEVICE_RULE,
        help=("where clients train and evaluate and the server evaluates centrally: `auto` is the"
              " first CUDA device the process sees (in a simulation, what "
              "`client-resources-num-gpus` gave its Ray actor), else MPS, else the CPU; a "
              "SuperNode's node config `device` overrides it; a device the process cannot use "
              "fails at start naming `device`. SynFlow, SNIP saliency and all mask aggregation "
              "stay on the CPU (exact)")),
    "precision": choice("float32", PRECISIONS,
        help=("`bf16`: forward passes under `torch.autocast` with bfloat16 (weights, scores and "
              "everything on the wire stay float32 or exact)")),
    "loader-workers": non_negative(0,
        help=("DataLoader worker processes per client loader (0: the training process loads; "
              "fedmask's data are tensors in memory, where workers seldom pay, a user's own "
              "loaders may differ)")),
    "pin-memory": flag(True,
        help=("pin the client loaders' batches in host memory when the client trains on CUDA "
              "(ignored on the CPU and MPS, where pinning buys nothing)")),
    "deterministic": flag(False,
        help=("`torch.use_deterministic_algorithms(True)` in the ServerApp and every ClientApp, "
              "cuDNN autotuning off and `CUBLAS_WORKSPACE_CONFIG=:4096:8` (unless set): GPU runs "
              "repeat bit for bit, an op without a deterministic kernel raises naming itself; CPU"
              " runs repeat anyway on one kind of CPU (torch picks its kernels by the CPU's "
              "vector instructions: the default run on an AVX-512 CPU and the same run with "
              "`ATEN_CPU_CAPABILITY=avx2` end with other digests and accuracies; set it alike to "
              "compare machines)")),
}
OPTIONS: dict[str, Option] = {**COMMON, **{key: option for method in REGISTRY.values()
                                           for key, option in method.options.items()}}
# May change when resuming (they change how long the server waits or how data is fed,
# never the result).
RESUME_FREE = ("resume", "round-timeout-s", "node-wait-s", "loader-workers", "pin-memory")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Return `value` as the type of `default` (ints are accepted for floats)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def parse(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `run_config`, fill in defaults, and return the full option dict."""
    unknown = sorted(set(run_config) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; allowed: {sorted(OPTIONS)}")
    config = {}
    for key, opt in OPTIONS.items():
        value = _coerce(key, run_config.get(key, opt.default), opt.default)
        if opt.check is not None and not opt.check(value):
            raise ConfigError(f"{key}: {value!r} is not allowed; must be {opt.rule}")
        config[key] = value
    if config["resume"] and not config["out-dir"]:
        raise ConfigError("resume: needs out-dir, the folder of the run to resume")
    for key, sentinel in _AUTO.items():
        if config[key] == sentinel:
            config[key] = REGISTRY[config["method"]].defaults[key]
    config["dataset"] = _dataset_reference(config)
    return config


def _dataset_reference(config: dict[str, Any]) -> str:
    """``dataset`` with ``image-column`` / ``label-column`` (a Hugging Face dataset's
    columns) folded in: the one string the data functions take."""
    for key in ("image-column", "label-column"):
        if config[key] and config["dataset"] in DATASETS:
            raise ConfigError(f"{key}: names a column of a Hugging Face dataset; "
                              f"{config['dataset']!r} is built in (leave {key} empty)")
    return hub.reference(config["dataset"], config["image-column"], config["label-column"])


def run_model(config: dict[str, Any]) -> nn.Module:
    """The fedmask model a parsed run `config` names, for its dataset, with a bias in
    its output layer where the method keeps per-class offsets there (HideNseek's
    ``class-bias``)."""
    spec = get_spec(config["dataset"])
    output_bias = config["method"] == "hidenseek" and config["class-bias"] != "none"
    return build_model(config["model"], spec.num_classes, spec.in_channels, spec.image_size,
                       output_bias)
