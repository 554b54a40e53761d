"""Wire helpers shared by the methods, and the FedPM theta encoding."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedmask.methods.fedpm import wire as fedpm
from fedmask.nn.models import build_model, num_prunable
from fedmask.nn.supermask import BernoulliSupermask, SignSupermask, supermasks
from fedmask.wire.records import ReplyError, array, attach_flat, read_flat


def test_array_reads_or_names_the_missing_key():
    record = ArrayRecord({"a": Array(np.arange(3))})
    np.testing.assert_array_equal(array(record, "a"), np.arange(3))
    with pytest.raises(ReplyError, match="b: missing"):
        array(record, "b")


def test_attach_flat_splits_in_prunable_order_and_read_flat_inverts():
    model = build_model("cnn", 10, 1, 12)
    n = num_prunable(model)
    prune = np.ones(n, bool)
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    attach_flat(model, SignSupermask, prune, signs)
    assert len(supermasks(model)) == 4
    for mask in supermasks(model).values():
        mask.scores.data = mask.scores.data.abs() + 1e-3  # all +1 now
    assert read_flat(model, SignSupermask.signs).all()
    with pytest.raises(Exception, match="expected"):
        attach_flat(build_model("cnn", 10, 1, 12), SignSupermask, prune[:-1], signs[:-1])


@pytest.mark.parametrize("theta, code", [(0.0, 0), (0.5, 128), (0.8, 204), (1.0, 255)])
def test_uint8_quantisation(theta, code):
    wire_theta = fedpm.quantise(np.array([theta]), "uint8")
    assert wire_theta.dtype == np.uint8 and wire_theta[0] == code
    assert abs(fedpm.dequantise(wire_theta)[0] - theta) <= 1 / 256
    assert 0 < fedpm.dequantise(wire_theta)[0] < 1  # never a certain 0 or 1


def test_float32_theta_is_exact_to_float32():
    theta = np.array([0.1234567, 0.9])
    np.testing.assert_array_equal(fedpm.dequantise(fedpm.quantise(theta, "float32")),
                                  theta.astype(np.float32).astype(np.float64))


def _config(n: int, fmt: str = "uint8") -> ConfigRecord:
    return ConfigRecord({"num-params": n, fedpm.THETA_FORMAT: fmt})


@pytest.mark.parametrize("wire_theta, fmt, match", [
    (np.zeros(5, np.uint8), "uint8", "expected 4"),
    (np.zeros(4, np.float32), "uint8", "uint8"),
    (np.zeros(4, np.uint8), "float32", "float32"),
    (np.array([0.1, np.nan, 0.2, 0.3], np.float32), "float32", r"\[0, 1\]"),
    (np.array([0.1, 1.5, 0.2, 0.3], np.float32), "float32", r"\[0, 1\]"),
])
def test_decode_theta_rejects_bad_downlink(wire_theta, fmt, match):
    with pytest.raises(ReplyError, match=match):
        fedpm.decode_theta(fedpm.encode_theta(wire_theta), _config(4, fmt))


def test_mask_net_and_sample_mask():
    model = build_model("cnn", 10, 1, 12)
    n = num_prunable(model)
    theta = np.where(np.arange(n) < n // 2, 1e-6, 1 - 1e-6)
    net = fedpm.mask_net(model, theta, "theta")
    assert all(isinstance(m, BernoulliSupermask) and m.estimator == "theta"
               for m in supermasks(net).values())
    np.testing.assert_array_equal(fedpm.sample_mask(net), np.arange(n) >= n // 2)
    assert torch.is_tensor(net(torch.zeros(1, 1, 12, 12)))
