"""Checkpoints: round trip without pickle, atomic replacement, RNG states, Checkpointable."""

import random

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedmask.server import checkpoint


class _Strategy(checkpoint.Checkpointable):
    STATE = ("signs", "iteration")

    def __init__(self):
        self.signs, self.iteration = np.array([True, False, True]), 3


def test_round_trip_of_state_arrays_document_and_rngs(tmp_path):
    path = tmp_path / checkpoint.CHECKPOINT
    strategy = _Strategy()
    arrays = ArrayRecord({"w": Array(np.arange(4, dtype=np.float32)),
                          "mask": Array(np.array([255, 1], np.uint8))})
    random.seed(5), torch.manual_seed(5)
    checkpoint.save(path, 7, strategy.state_dict(), arrays, {"config": {"lr": 0.1}})
    expected = (random.random(), torch.rand(2))
    assert not (tmp_path / (checkpoint.CHECKPOINT + ".tmp")).exists()

    random.seed(99), torch.manual_seed(99)
    saved = checkpoint.load(path)
    assert saved.server_round == 7 and saved.document["config"] == {"lr": 0.1}
    assert list(saved.arrays) == ["w", "mask"]
    np.testing.assert_array_equal(saved.arrays["w"].numpy(), np.arange(4))
    fresh = _Strategy()
    fresh.signs, fresh.iteration = np.zeros(3, bool), 0
    fresh.load_state_dict(saved.strategy)
    np.testing.assert_array_equal(fresh.signs, strategy.signs)
    assert fresh.iteration == 3 and isinstance(fresh.iteration, int)
    checkpoint.restore_rng(saved)
    assert random.random() == expected[0] and torch.equal(torch.rand(2), expected[1])


def test_a_new_checkpoint_replaces_the_old_one(tmp_path):
    path = tmp_path / checkpoint.CHECKPOINT
    for server_round in (1, 2):
        checkpoint.save(path, server_round, {}, ArrayRecord(), {})
    assert checkpoint.load(path).server_round == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CHECKPOINT]
