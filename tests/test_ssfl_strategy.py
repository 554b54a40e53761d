"""SSFL server: saliency aggregation and top-k by hand, the saliency query, bad replies."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedmask.methods.masked import wire as masked_wire
from fedmask.methods.ssfl import wire as wire
from fedmask.nn.models import build_model
from fedmask.nn.pruning import flat_weights, keep_largest
from strategies import SSFL
from strategies.ssfl import aggregate_saliency


def test_weighted_saliency_and_global_top_k_hand_computed():
    s1 = np.array([1.0, 0.0, 4.0, 2.0])
    s2 = np.array([3.0, 6.0, 0.0, 2.0])
    weighted = aggregate_saliency([(30, s1), (10, s2)], weighted=True)
    np.testing.assert_allclose(weighted, [1.5, 1.5, 3.0, 2.0])  # 0.75 s1 + 0.25 s2
    plain = aggregate_saliency([(30, s1), (10, s2)], weighted=False)
    np.testing.assert_allclose(plain, [2.0, 3.0, 2.0, 2.0])
    everywhere = np.ones(4, bool)
    np.testing.assert_array_equal(keep_largest(weighted, everywhere, 2), [False, False, True, True])
    np.testing.assert_array_equal(keep_largest(weighted, everywhere, 3),
                                  [True, False, True, True])  # tie: earlier
    np.testing.assert_array_equal(keep_largest(plain, everywhere, 1), [False, True, False, False])


class _QueryGrid:
    """Answers every query with the saliency a test chose for that node."""

    def __init__(self, client_reply, answers):
        self.client_reply, self.answers, self.sent = client_reply, answers, []

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, timeout=None):
        self.sent = list(messages)
        return [self.client_reply(self.answers[m.metadata.dst_node_id],
                                  node=m.metadata.dst_node_id, message_type="query")
                for m in self.sent]


def _answer(values, n):
    if values is None:
        return None
    return RecordDict({wire.SALIENCY: ArrayRecord({wire.SNIP: Array(values)}),
                       "metrics": MetricRecord({"num-examples": n})})


def test_find_mask_queries_every_node_and_drops_bad_answers(client_reply):
    strategy = SSFL(model=build_model("cnn", 10, 1, 12), seed=3, density=0.25, min_train_nodes=1)
    n = strategy.mask.size
    good = np.zeros(n, np.float16)
    good[-strategy.keep:] = 1.0  # this client finds the last positions salient
    grid = _QueryGrid(client_reply, {
        1: _answer(good, 10),
        2: _answer(np.ones(n, np.float32), 90),   # wrong precision: dropped
        3: _answer(np.ones(5, np.float16), 90),   # wrong size: dropped
        4: None,                                  # failed node
    })
    strategy.find_mask(grid, timeout=5)
    assert {m.metadata.dst_node_id for m in grid.sent} == {1, 2, 3, 4}
    assert all(m.metadata.message_type == "query" for m in grid.sent)
    assert strategy.mask.sum() == strategy.keep and strategy.mask[-strategy.keep:].all()
    start = np.concatenate([strategy.weights[k].numpy().ravel() for k in strategy.names])
    np.testing.assert_array_equal(start, np.where(strategy.mask, flat_weights(strategy.model), 0))
    assert strategy.holders == set()  # every node must be sent the new mask
    config = strategy.config()
    assert (config[masked_wire.PHASE], config[masked_wire.NUM_KEPT]) == (2, strategy.keep)


def test_no_valid_saliency_stops_the_run(client_reply):
    strategy = SSFL(model=build_model("cnn", 10, 1, 12), seed=3)
    with pytest.raises(RuntimeError, match="saliency"):
        strategy.find_mask(_QueryGrid(client_reply, {1: None}), timeout=5)


@pytest.mark.parametrize("bad", [np.full(3, np.nan, np.float16), -np.ones(3, np.float16)])
def test_nan_or_negative_saliency_is_refused(client_reply, bad):
    strategy = SSFL(model=build_model("cnn", 10, 1, 12), seed=3)
    values = np.ones(strategy.mask.size, np.float16)
    values[:3] = bad
    reply = client_reply(_answer(values, 5), message_type="query")
    with pytest.raises(ValueError, match="snip"):
        strategy._decode_saliency(reply)


@pytest.mark.parametrize("kwargs, match", [
    ({"saliency_format": "int8"}, "saliency-format"), ({"saliency_batches": 0}, "saliency-batches"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SSFL(model=build_model("cnn", 10, 1, 12), **kwargs)
