"""Tests for fedmask.nn.seeded: announcing and rebuilding seeded frozen networks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flwr.app import ConfigRecord
from flwr.common.serde import config_record_from_proto, config_record_to_proto
from torch import nn

from fedmask.nn.models import cnn, weight_hash
from fedmask.nn.portable_random import GENERATOR
from fedmask.nn.seeded import (
    GENERATOR_KEY,
    HASH,
    INIT,
    SEED,
    GeneratorError,
    SeededNet,
    WeightHashError,
)


def _model(num_classes: int = 10, torch_seed: int = 0) -> nn.Module:
    torch.manual_seed(torch_seed)  # the default init must not matter
    return cnn(num_classes, 1, 8)


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_keys() -> None:
    assert (SEED, INIT, HASH, GENERATOR_KEY) == ("seed", "init", "weight-hash",
                                                 "weight-generator")


def test_the_generator_travels_with_the_seed_and_an_unknown_one_is_refused() -> None:
    config = ConfigRecord()
    SeededNet.announce(_model(), 5, "kaiming-normal").to_config(config)
    assert config[GENERATOR_KEY] == GENERATOR
    config[GENERATOR_KEY] = "philox-acklam-9"
    with pytest.raises(GeneratorError, match="weight-generator: 'philox-acklam-9' is not known"):
        SeededNet.from_config(config).rebuild(_model())
    del config[GENERATOR_KEY]  # a message or file from before generators were named
    with pytest.raises(GeneratorError, match="weight-generator: missing"):
        SeededNet.from_config(config)


def test_announce_initialises_in_place() -> None:
    model = _model()
    before = weight_hash(model)
    net = SeededNet.announce(model, 42, "signed-constant")
    assert (net.seed, net.init) == (42, "signed-constant")
    assert net.weight_hash == weight_hash(model) != before
    assert net == SeededNet.announce(_model(torch_seed=1), 42, "signed-constant")


def test_config_round_trip() -> None:
    net = SeededNet.announce(_model(), 7, "kaiming-uniform")
    config = ConfigRecord({"lr": 0.1})
    assert net.to_config(config) is None
    assert config[SEED] == 7
    assert config[INIT] == "kaiming-uniform"
    assert config[HASH] == net.weight_hash
    assert config["lr"] == 0.1  # other entries kept
    assert SeededNet.from_config(config) == net


@pytest.mark.parametrize("seed", [0, 2**31 + 3, 2**63 - 1, 2**64 - 1])
def test_config_round_trip_through_wire(seed: int) -> None:
    net = SeededNet(seed, "kaiming-normal", "0123456789abcdef")
    config = ConfigRecord()
    net.to_config(config)
    received = config_record_from_proto(config_record_to_proto(config))
    assert SeededNet.from_config(received) == net


def test_rebuild_matches_server() -> None:
    server = _model(torch_seed=0)
    config = ConfigRecord()
    SeededNet.announce(server, 2024, "kaiming-normal").to_config(config)
    client = _model(torch_seed=1)
    assert not _state_equal(server, client)
    assert SeededNet.from_config(config).rebuild(client) is client
    assert _state_equal(server, client)
    assert weight_hash(client) == config[HASH]


def test_rebuild_twice_is_idempotent() -> None:
    net = SeededNet.announce(_model(), 5, "signed-constant")
    client = _model(torch_seed=3)
    net.rebuild(client)
    first = {k: v.clone() for k, v in client.state_dict().items()}
    net.rebuild(client)
    assert all(torch.equal(v, first[k]) for k, v in client.state_dict().items())


def test_rebuild_different_architecture_fails() -> None:
    config = ConfigRecord()
    SeededNet.announce(_model(10), 1, "kaiming-normal").to_config(config)
    with pytest.raises(WeightHashError, match="weight-hash"):
        SeededNet.from_config(config).rebuild(_model(9))
    with pytest.raises(WeightHashError, match="weight-hash"):
        SeededNet.from_config(config).rebuild(cnn(10, 3, 8))


def test_rebuild_different_seed_fails() -> None:
    config = ConfigRecord()
    net = SeededNet.announce(_model(), 1, "kaiming-normal")
    net.to_config(config)
    config[SEED] = 2
    with pytest.raises(WeightHashError, match="weight-hash") as info:
        SeededNet.from_config(config).rebuild(_model())
    assert net.weight_hash in str(info.value)


def test_rebuild_different_init_fails() -> None:
    net = SeededNet.announce(_model(), 1, "kaiming-normal")
    with pytest.raises(WeightHashError, match="weight-hash"):
        dataclasses.replace(net, init="kaiming-uniform").rebuild(_model())


def test_rebuild_tampered_hash_fails() -> None:
    net = SeededNet.announce(_model(), 1, "kaiming-normal")
    with pytest.raises(WeightHashError):
        dataclasses.replace(net, weight_hash="0" * 16).rebuild(_model())


def test_weight_hash_error_is_runtime_error() -> None:
    assert issubclass(WeightHashError, RuntimeError)


def test_seeded_net_is_frozen() -> None:
    net = SeededNet(1, "kaiming-normal", "abc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.seed = 2  # type: ignore[misc]
