"""Tests for fedmask.config: defaults, pyproject consistency and validation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fedmask.config import OPTIONS, ConfigError, parse
from fedmask.data import hub

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pyproject_config() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_parse_empty_gives_defaults() -> None:
    config = parse({})
    assert list(config) == list(OPTIONS)
    for key, opt in OPTIONS.items():
        if key not in ("optimizer", "lr", "init", "loss"):  # "auto" / 0 resolve per method
            assert config[key] == opt.default
        assert type(config[key]) is type(opt.default), key


def test_some_defaults() -> None:
    config = parse({})
    assert config["method"] == "hidenseek"
    assert config["model"] == "cnn"
    assert (config["optimizer"], config["lr"]) == ("adam", 0.01)
    assert config["loss"] == "balanced"
    assert parse({"method": "fedavg"})["loss"] == "cross-entropy"
    assert parse({"loss": "cross-entropy"})["loss"] == "cross-entropy"
    assert config["density"] == 0.5
    assert config["num-server-rounds"] == 5


@pytest.mark.parametrize("given, expected", [
    ({"method": "fedavg"}, ("sgd", 0.02, "kaiming-normal")),
    ({"method": "fedavg", "lr": 0.2}, ("sgd", 0.2, "kaiming-normal")),
    ({"method": "hidenseek", "optimizer": "sgd"}, ("sgd", 0.01, "kaiming-normal")),
    ({"method": "fedpm"}, ("adam", 0.2, "signed-constant")),
    ({"method": "fedpm", "init": "kaiming-uniform"}, ("adam", 0.2, "kaiming-uniform")),
    ({"method": "fedsparsify"}, ("sgd", 0.02, "kaiming-normal")),
])
def test_auto_settings_resolve_per_method(given, expected) -> None:
    config = parse(given)
    assert (config["optimizer"], config["lr"], config["init"]) == expected


def test_pyproject_defaults_match_options() -> None:
    toml = _pyproject_config()
    assert set(toml) == set(OPTIONS)
    for key, opt in OPTIONS.items():
        assert toml[key] == opt.default, key
        assert type(toml[key]) is type(opt.default), key
    assert parse(toml) == parse({})


def test_parse_does_not_mutate_input() -> None:
    given = {"lr": 1, "seed": 3}
    config = parse(given)
    assert given == {"lr": 1, "seed": 3}
    assert config is not given
    assert config["seed"] == 3


def test_valid_overrides() -> None:
    config = parse({"method": "fedavg", "dataset": "cifar10", "model": "resnet18",
                    "init": "signed-constant", "partition": "dirichlet",
                    "optimizer": "adam", "prune-scope": "layer", "density": 1.0,
                    "fraction-train": 1.0, "fraction-evaluate": 0.0, "momentum": 0.0,
                    "seed": 0, "personal-epochs": 0, "out-dir": "/tmp/x"})
    assert config["method"] == "fedavg"
    assert config["dataset"] == "cifar10"
    assert config["density"] == 1.0
    assert config["fraction-evaluate"] == 0.0
    assert config["out-dir"] == "/tmp/x"
    assert config["batch-size"] == 64  # untouched default


@pytest.mark.parametrize(("key", "value"), [("lr", 1), ("alpha", 2), ("node-wait-s", 5),
                                            ("density", 1)])
def test_int_accepted_for_float(key: str, value: int) -> None:
    got = parse({key: value})[key]
    assert type(got) is float
    assert got == float(value)


def _error(run_config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse(run_config)
    assert isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("method", "foo", ["hidenseek", "fedpm", "mpfl", "ssfl", "fedsparsify", "fedavg"]),
    ("fedsparsify-variant", "both", ["global", "local"]),
    ("saliency-format", "int8", ["float16", "float32"]),
    ("prune-structure", "channel", ["unstructured", "filter"]),
    ("partition", "x", ["iid", "dirichlet", "shards"]),
    ("model", "vgg", ["cnn", "conv4", "conv6", "resnet18"]),
    ("init", "xavier", ["auto", "kaiming-normal", "kaiming-uniform", "signed-constant"]),
    ("mask-coding", "zip", ["packed", "entropy"]),
    ("estimator", "reinforce", ["ste", "theta"]),
    ("theta-format", "float16", ["uint8", "float32"]),
    ("optimizer", "rmsprop", ["sgd", "adam"]),
    ("prune-scope", "local", ["global", "layer"]),
])
def test_bad_choice(key: str, value: str, allowed: list[str]) -> None:
    msg = _error({key: value})
    assert msg.startswith(f"{key}:")
    assert repr(value) in msg
    for name in allowed:
        assert repr(name) in msg, name


_UNIT_OPEN = re.compile(r"\(0(\.0)?, 1(\.0)?\]")
_UNIT_CLOSED = re.compile(r"\[0(\.0)?, 1(\.0)?\]")


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("density", 0, _UNIT_OPEN),
    ("density", 0.0, _UNIT_OPEN),
    ("density", 1.5, _UNIT_OPEN),
    ("fraction-train", 0, _UNIT_OPEN),
    ("fraction-train", 1.01, _UNIT_OPEN),
    ("test-fraction", 0.0, _UNIT_OPEN),
    ("fraction-evaluate", -0.1, _UNIT_CLOSED),
    ("momentum", 1.5, _UNIT_CLOSED),
    ("lr", -1, re.compile(r">= 0")),
    ("alpha", 0.0, re.compile(r"> 0")),
    ("num-server-rounds", 0, re.compile(r"> 0")),
    ("batch-size", -4, re.compile(r"> 0")),
    ("seed", -1, re.compile(r"\[0, 9223372036854775807\]")),
    ("seed", 2**64, re.compile(r"\[0, 9223372036854775807\]")),
    ("train-limit", -1, re.compile(r">= 0")),
    ("final-sparsity", 1.0, re.compile(r"\[0\.0, 1\.0\)")),
    ("final-sparsity", -0.1, re.compile(r"\[0\.0, 1\.0\)")),
    ("prune-every", 0, re.compile(r"> 0")),
    ("prune-start", 0, re.compile(r"> 0")),
])
def test_out_of_range(key: str, value: float, rule: re.Pattern) -> None:
    msg = _error({key: value})
    assert msg.startswith(f"{key}:")
    assert rule.search(msg), msg


def test_nan_rejected() -> None:
    msg = _error({"lr": float("nan")})
    assert msg.startswith("lr:")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("num-server-rounds", "3", "int"),
    ("seed", 1.5, "int"),
    ("seed", True, "int"),
    ("batch-size", 64.0, "int"),
    ("lr", "0.1", "float"),
    ("lr", True, "float"),
    ("method", 1, "str"),
    ("out-dir", None, "str"),
])
def test_wrong_type(key: str, value: object, expected: str) -> None:
    msg = _error({key: value})
    assert msg.startswith(f"{key}:")
    assert expected in msg
    assert repr(value) in msg


def test_unknown_key() -> None:
    msg = _error({"learning-rate": 0.1})
    assert "learning-rate" in msg
    assert "lr" in msg  # lists the allowed keys


def test_unknown_keys_all_named() -> None:
    msg = _error({"zeta": 1, "alpha-x": 2, "lr": 0.1})
    assert "zeta" in msg and "alpha-x" in msg


@pytest.mark.parametrize("profile", sorted((Path(__file__).parents[1] / "conf").glob("*.toml")))
def test_conf_profiles_are_valid_run_configs(profile) -> None:
    config = parse(tomllib.loads(profile.read_text()))
    assert config["method"] == "ssfl" and config["density"] == 0.5


def test_dataset_is_a_built_in_name_a_hub_id_or_a_folder():
    """Any non-empty name parses (a hub id or folder is checked when it is loaded,
    at the ServerApp's start); an empty one fails naming the option."""
    assert parse({"dataset": "uoft-cs/cifar10"})["dataset"] == "uoft-cs/cifar10"
    with pytest.raises(ConfigError, match="^dataset: .*Hugging Face dataset id"):
        parse({"dataset": ""})


def test_columns_apply_to_hugging_face_datasets_only():
    """Named columns travel with the dataset name; a built-in dataset refuses them."""
    ref = parse({"dataset": "me/digits", "label-column": "digit"})["dataset"]
    assert hub.parse_reference(ref) == ("me/digits", "", "digit")
    with pytest.raises(ConfigError, match="^image-column: .*'mnist' is built in"):
        parse({"dataset": "mnist", "image-column": "pixels"})
