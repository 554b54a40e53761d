"""The resumable round loop: every method, interrupted and resumed from a checkpoint,
ends in the same global state as an uninterrupted run (clients answered in-process)."""

import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedmask.client.settings import LocalSettings
from fedmask.nn.models import build_model, seeded_init
from fedmask.server import checkpoint
from fedmask.server.results import arrays_sha256
from fedmask.server.rounds import run_rounds
from strategies import MPFL, SSFL, FedAvg, FedPM, FedSparsify, HideNseek

from conftest import LoopbackGrid

NODES = [11, 12, 13]


def _setup(method):
    """A fresh strategy for `method` and its initial arrays, as the server builds them."""
    model = build_model("cnn", 10, 1, 12, output_bias=method == "hidenseek")  # its offsets
    common = {"seed": 7, "min_train_nodes": 2, "fraction_evaluate": 0.34}  # one evaluates
    strategy = {
        "hidenseek": lambda: HideNseek(model=model, input_shape=(1, 12, 12), synflow_iterations=3,
                                       **common),
        "fedpm": lambda: FedPM(model=model, **common),
        "mpfl": lambda: MPFL(model=model, density=0.5, prune_rate=0.3, **common),
        "ssfl": lambda: SSFL(model=model, density=0.5, **common),
        "fedsparsify": lambda: FedSparsify(model=model, num_server_rounds=3,
                                           fedsparsify_variant="local", **common),
        "fedavg": lambda: FedAvg(model=model, min_train_nodes=2, fraction_evaluate=0.34),
    }[method]()
    if method == "fedavg":
        seeded_init(model, 7, "kaiming-normal")
        return strategy, ArrayRecord(model.state_dict())
    if method == "ssfl":
        strategy.find_mask(LoopbackGrid("ssfl", NODES), 60)
    return strategy, strategy.global_arrays()


def _grid(method):
    return LoopbackGrid(method, NODES, output_bias=method == "hidenseek")


def _rounds(strategy, arrays, rounds, grid, after=lambda *args: None):
    config = LocalSettings(local_epochs=1, lr=0.05).to_config()
    return run_rounds(strategy, grid, arrays, rounds, 60, config, config, after)


def _state(strategy):
    return {k: np.asarray(v).copy() for k, v in strategy.state_dict().items()}


@pytest.mark.integration  # a whole federated run, in-process
@pytest.mark.parametrize("method", ["hidenseek", "fedpm", "mpfl", "ssfl", "fedsparsify",
                                    "fedavg"])
def test_resumed_run_ends_like_an_uninterrupted_one(method, tmp_path):
    random.seed(0), torch.manual_seed(0)  # the model's own weights: w0 with init="model"
    whole, arrays = _setup(method)
    final = _rounds(whole, arrays, range(1, 4), _grid(method))

    random.seed(0), torch.manual_seed(0)
    first, arrays = _setup(method)
    path = tmp_path / checkpoint.CHECKPOINT
    _rounds(first, arrays, range(1, 3), _grid(method),
            lambda r, a, *_: checkpoint.save(path, r, first.state_dict(), a, {"config": {}}))
    random.seed(123), torch.manual_seed(123)  # a new process: other RNG states and w0
    resumed, _ = _setup(method)
    saved = checkpoint.load(path)
    assert saved.server_round == 2
    resumed.load_state_dict(saved.strategy)
    checkpoint.restore_rng(saved)
    again = _rounds(resumed, saved.arrays, range(3, 4), _grid(method))

    assert arrays_sha256(again) == arrays_sha256(final)
    expected = _state(whole)
    if method == "hidenseek":  # the per-class offsets are learnt and resumed too
        assert expected["offset.bias"].any()
    assert set(_state(resumed)) == set(expected)
    for key, value in _state(resumed).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
