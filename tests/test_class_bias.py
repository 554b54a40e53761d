"""HideNseek's per-class logit offset (``class-bias``): the server's step, the wire
contract and its validation, the output layer, the client's statistics, and the
offset carried into every form of the global model."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fedmask.client
from fedmask.client import node
from fedmask.client.settings import LocalSettings
from fedmask.methods.hidenseek import wire
from fedmask.nn.class_bias import class_stats, output_layer
from fedmask.nn.model_file import load_model
from fedmask.nn.models import build_model
from fedmask.server.class_bias import ClassBias
from fedmask.wire import class_bias as offset_wire
from fedmask.wire.class_bias import CLASS_STATS, PROB_UNITS, ClassStats, decode_stats
from fedmask.wire.records import ReplyError
from strategies import HideNseek

from conftest import FakeGrid, LoopbackGrid, tiny_client_data


def _stats(ids, counts, probs) -> ClassStats:
    return ClassStats.of(np.array(ids), np.array(counts), np.array(probs, dtype=float))


def test_the_step_is_the_balanced_cross_entropys_gradient_over_the_classes_reported():
    offsets = ClassBias(3, lr=2.0)
    metrics = offsets.update([_stats([0], [4], [[0.5, 0.25, 0.25]])])
    # only class 0 reported: b -= 2 * (q_0 - e_0)
    np.testing.assert_allclose(offsets.bias, [1.0, -0.5, -0.5], atol=1e-4)
    assert metrics == {"class-bias-classes": 1, "class-bias-range": pytest.approx(1.5, abs=1e-4)}
    offsets.update([_stats([1], [2], [[0.0, 1.0, 0.0]])])  # class 0's report stands
    # mean of (q_0 - e_0, q_1 - e_1) = (-0.25, 0.125, 0.125)
    np.testing.assert_allclose(offsets.bias, [1.5, -0.75, -0.75], atol=1e-4)
    offsets.update([])  # no report this round: nothing new to step on
    np.testing.assert_allclose(offsets.bias, [1.5, -0.75, -0.75], atol=1e-4)


def test_a_rounds_reports_of_one_class_pool_by_count_in_any_order():
    reports = [_stats([0, 1], [3, 1], [[0.2, 0.8], [0.5, 0.5]]),
               _stats([0], [1], [[1.0, 0.0]])]
    forward, backward = ClassBias(2, 1.0), ClassBias(2, 1.0)
    forward.update(reports)
    backward.update(reports[::-1])
    np.testing.assert_array_equal(forward.bias, backward.bias)  # exact integer sums
    np.testing.assert_allclose(forward.reports[0], [0.4, 0.6], atol=1e-4)  # (3 * 0.2 + 1) / 4


def _reply(client_reply, record: MetricRecord) -> Message:
    return client_reply(RecordDict({CLASS_STATS: record}))


def test_the_statistics_round_trip_and_a_reply_without_them_is_valid(client_reply):
    sent = _stats([2, 0], [5, 7], [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    got = decode_stats(_reply(client_reply, sent.record()), 3)
    np.testing.assert_array_equal(got.ids, [2, 0])
    np.testing.assert_array_equal(got.counts, [5, 7])
    np.testing.assert_array_equal(got.units.sum(axis=1), [PROB_UNITS, PROB_UNITS])
    assert decode_stats(client_reply(RecordDict({})), 3) is None


@pytest.mark.parametrize(("values", "field"), [
    ({"class-ids": [0, 0]}, "class-ids"),
    ({"class-ids": [0, 3]}, "class-ids"),
    ({"class-ids": []}, "class-ids"),
    ({"class-ids": [0.5, 1.0]}, "class-ids"),
    ({"class-counts": [0, 1]}, "class-counts"),
    ({"class-counts": [1]}, "class-counts"),
    ({"class-probs": [PROB_UNITS, 0, 0, PROB_UNITS, 0]}, "class-probs"),
    ({"class-probs": [PROB_UNITS, 0, 0, PROB_UNITS, 100, 0]}, "class-probs"),  # sums past 1
    ({"class-probs": [PROB_UNITS, 0, 0, -1, PROB_UNITS + 1, 0]}, "class-probs"),
])
def test_malformed_statistics_raise_naming_the_field(client_reply, values, field):
    good = {"class-ids": [0, 1], "class-counts": [3, 4],
            "class-probs": [PROB_UNITS, 0, 0, 0, PROB_UNITS, 0]}
    with pytest.raises(ReplyError, match=f"class-stats/{field}"):
        decode_stats(_reply(client_reply, MetricRecord({**good, **values})), 3)


@pytest.mark.parametrize(("config", "key"), [
    ({"class-bias-layer": ""}, "class-bias-layer"),
    ({"class-bias-layer": "fc", "class-bias": "0.5"}, "class-bias"),
    ({"class-bias-layer": "fc", "class-bias": []}, "class-bias"),
    ({"class-bias-layer": "fc", "class-bias": [0.5, float("nan")]}, "class-bias"),
])
def test_a_malformed_offset_in_a_message_raises_naming_the_key(config, key):
    msg = Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=1,
                  message_type="evaluate")
    with pytest.raises(ValueError, match=f"config/{key}:"):
        offset_wire.offset_of(msg)


class _Head(nn.Module):
    """A net whose hidden layer runs twice (as a quickstart's pool does)."""

    def __init__(self, after=None, bias=True) -> None:
        super().__init__()
        self.body, self.fc = nn.Linear(4, 4), nn.Linear(4, 3, bias=bias)
        self.after = after

    def forward(self, x):
        out = self.fc(torch.relu(self.body(torch.relu(self.body(x)))))
        return out if self.after is None else self.after(out)


def test_the_output_layer_is_the_one_whose_output_the_model_returns():
    model, x = _Head(), torch.randn(3, 4)
    before = model(x)
    assert output_layer(model, (4,)) == "fc"
    torch.testing.assert_close(model(x), before)  # the search leaves the model as it was
    assert output_layer(build_model("cnn", 10, 1, 12, output_bias=True), (1, 12, 12)) == "11"
    wrapped = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3)))
    assert output_layer(wrapped, (4,)) == "1.0"  # the innermost, not its container


@pytest.mark.parametrize(("model", "match"), [
    (_Head(bias=False), "fc has none"),
    (_Head(after=lambda t: torch.log_softmax(t, 1)), "no layer's output"),
])
def test_a_model_the_offset_cannot_live_in_fails_at_start_naming_the_option(model, match):
    with pytest.raises(ValueError, match=f"class-bias.*{match}"):
        HideNseek(model=model, input_shape=(4,), synflow_iterations=2, class_bias="federated")
    auto = HideNseek(model=model, input_shape=(4,), synflow_iterations=2)  # "auto": logged, off
    assert auto.offset is None and "class-bias-layer" not in auto.config()


def test_statistics_are_the_mean_softmax_per_class_and_leave_the_shuffle_as_it_was():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=gen), torch.tensor([0, 2] * 20)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(5))
    model, bias = _Head(), np.array([0.5, -1.0, 2.0], dtype=np.float32)
    torch.manual_seed(3)
    untouched = [b[1].tolist() for b in loader], torch.rand(1)
    torch.manual_seed(3)
    loader.generator.manual_seed(5)
    stats = class_stats(model, loader, bias, 3)
    assert ([b[1].tolist() for b in loader], torch.rand(1)) == untouched
    with torch.no_grad():
        probs = torch.softmax(model(x) + torch.from_numpy(bias), 1).double()
    np.testing.assert_array_equal(stats.ids, [0, 2])
    np.testing.assert_array_equal(stats.counts, [20, 20])
    expected = np.stack([probs[y == c].mean(0).numpy() for c in (0, 2)])
    np.testing.assert_allclose(stats.units / PROB_UNITS, expected, atol=1e-5)


def _strategy(**kwargs) -> HideNseek:
    return HideNseek(model=build_model("cnn", 10, 1, 12, output_bias=True),
                     input_shape=(1, 12, 12), seed=1, synflow_iterations=5,
                     mask_coding="packed", min_train_nodes=1, **kwargs)


def _received(strategy, kind: str, server_round: int) -> list[Message]:
    config = LocalSettings(local_epochs=1, lr=0.05, optimizer="adam").to_config()
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    sent = configure(server_round, strategy.global_arrays(), config, FakeGrid([21, 22]))
    for msg in sent:
        msg.metadata.__dict__["_message_id"] = "m1"
    return sent


def _train(strategy, server_round: int, state: RecordDict) -> Message:
    """Node 21's reply to its train message; `state` is what it holds between rounds."""
    msg = _received(strategy, "train", server_round)[0]
    return node.train(msg, build_model("cnn", 10, 1, 12, output_bias=True), tiny_client_data(),
                      state)


def test_offsets_go_down_from_round_two_and_the_replies_statistics_step_them(client_reply):
    strategy, state = _strategy(), RecordDict()
    first = _received(strategy, "train", 1)[0]
    assert first.content.config_records["config"]["class-bias-layer"] == "11"
    assert offset_wire.offset_of(first) == ("11", None)  # round 1: no voted model, no b
    reply = _train(strategy, 1, state)
    assert decode_stats(reply, 10) is None  # nothing to report on
    _, metrics = strategy.aggregate_train(1, [client_reply(reply.content, node=21)])
    assert "class-stats-replies" not in metrics and not strategy.offset.bias.any()
    second = _received(strategy, "train", 2)[0]
    np.testing.assert_array_equal(offset_wire.offset_of(second)[1], np.zeros(10))
    reply = _train(strategy, 2, state)
    stats = decode_stats(reply, 10)
    assert stats is not None and stats.counts.sum() == 64
    _, metrics = strategy.aggregate_train(2, [client_reply(reply.content, node=21)])
    assert metrics["class-stats-replies"] == 1 and metrics["class-bias-classes"] == stats.ids.size
    assert np.abs(strategy.offset.bias).max() > 0
    third = _received(strategy, "train", 3)[0]
    np.testing.assert_array_equal(offset_wire.offset_of(third)[1], strategy.offset.bias)


def test_the_offsets_never_change_the_signs_and_a_bad_record_rejects_the_reply(client_reply):
    with_stats, without = _strategy(), _strategy(class_bias="none")
    states = {id(with_stats): RecordDict(), id(without): RecordDict()}
    for strategy in (with_stats, without):
        first = _train(strategy, 1, states[id(strategy)])
        strategy.aggregate_train(1, [client_reply(first.content, node=21)])
    np.testing.assert_array_equal(with_stats.signs, without.signs)
    reply = _train(with_stats, 2, states[id(with_stats)])
    _train(without, 2, states[id(without)])  # its round-2 message, so that it holds g
    with_stats.aggregate_train(2, [client_reply(reply.content, node=21)])
    without.aggregate_train(2, [client_reply(RecordDict({
        k: v for k, v in reply.content.items() if k != CLASS_STATS}), node=21)])
    np.testing.assert_array_equal(with_stats.signs, without.signs)
    bias = with_stats.offset.bias.copy()
    bad = RecordDict(dict(reply.content.items()))
    bad[CLASS_STATS] = MetricRecord({"class-ids": [11], "class-counts": [1],
                                     "class-probs": [PROB_UNITS] + [0] * 9})
    arrays, _ = with_stats.aggregate_train(3, [client_reply(bad, node=22)])
    assert arrays is None and with_stats.rejected[3][0]["field"] == "class-stats/class-ids"
    np.testing.assert_array_equal(with_stats.offset.bias, bias)
    arrays, _ = without.aggregate_train(3, [client_reply(reply.content, node=22)])
    assert arrays is None and without.rejected[3][0]["field"] == "metrics"  # not asked for


def test_every_form_of_the_global_model_carries_the_offsets(tmp_path):
    strategy = _strategy()
    strategy.offset.bias = np.linspace(-1, 1, 10).astype(np.float32)
    arrays = strategy.global_arrays()
    expected = torch.from_numpy(strategy.offset.bias)
    torch.testing.assert_close(strategy.evaluation_model(arrays)[-1].bias.detach(), expected)
    torch.testing.assert_close(strategy.global_model(arrays)[-1].bias.detach(), expected)
    evaluate = _received(strategy, "evaluate", 2)[0]
    plain = fedmask.client.eval_module(evaluate, build_model("cnn", 10, 1, 12, output_bias=True),
                                       RecordDict())
    torch.testing.assert_close(plain[-1].bias.detach(), expected)
    strategy.save_model(tmp_path / "m.safetensors", arrays, architecture="cnn",
                        dataset={"num_classes": 10, "in_channels": 1, "image_size": 12})
    loaded = load_model(tmp_path / "m.safetensors")
    torch.testing.assert_close(loaded[-1].bias.detach(), expected)
    x = torch.randn(5, 1, 12, 12)
    torch.testing.assert_close(loaded(x), plain(x))


def test_the_offsets_are_checkpointed():
    strategy, restored = _strategy(), _strategy()
    strategy.offset.update([_stats([3], [2], [[0.1] * 10])])
    restored.load_state_dict(strategy.state_dict())
    np.testing.assert_array_equal(restored.offset.bias, strategy.offset.bias)
    np.testing.assert_array_equal(restored.offset.reported, strategy.offset.reported)


def test_a_users_loop_that_does_not_report_sends_no_statistics_and_the_server_says_so(
        client_reply, caplog):
    strategy = _strategy()
    msg = _received(strategy, "train", 2)[0]
    net = fedmask.client.train_module(msg, build_model("cnn", 10, 1, 12, output_bias=True),
                                      RecordDict())
    reply = fedmask.client.train_reply(msg, net, 64)  # no report_classes
    assert CLASS_STATS not in reply.content.metric_records
    _, metrics = strategy.aggregate_train(2, [client_reply(reply.content, node=21)])
    assert metrics["class-stats-replies"] == 0
    assert "fedmask.client.report_classes" in caplog.text


def test_report_classes_takes_the_statistics_a_users_reply_carries(client_reply):
    strategy = _strategy()
    msg = _received(strategy, "train", 2)[0]
    net = fedmask.client.train_module(msg, build_model("cnn", 10, 1, 12, output_bias=True),
                                      RecordDict())
    fedmask.client.report_classes(msg, net, [{"img": x, "label": y}
                                             for x, y in tiny_client_data().train])
    reply = fedmask.client.train_reply(msg, net, 64)
    assert decode_stats(reply, 10).counts.sum() == 64
    with pytest.raises(ValueError, match="not the module"):
        fedmask.client.report_classes(msg, build_model("cnn", 10, 1, 12), [])


def test_the_packed_masks_record_keeps_the_offsets_beside_the_bits():
    record = wire.encode_masks(np.ones(8, bool), np.ones(8, bool), compact=True,
                               class_bias=np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(wire.decode_class_bias(record), [0, 1, 2])
    assert wire.decode_class_bias(wire.encode_masks(np.ones(8, bool), None)) is None


class _Recording(LoopbackGrid):
    """A LoopbackGrid that keeps every query message and reply; `spoil` replaces a
    query reply's class statistics."""

    def __init__(self, spoil: MetricRecord | None = None) -> None:
        super().__init__("hidenseek", [21, 22], output_bias=True)
        self.queries: list[tuple[Message, Message]] = []
        self.spoil = spoil

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout)
        if messages[0].metadata.message_type == "query":
            if self.spoil is not None:
                replies[0].content[CLASS_STATS] = self.spoil
            self.queries += list(zip(messages, replies))
        return replies


def _voted_round(strategy, grid, server_round: int) -> dict:
    config = LocalSettings(local_epochs=1, lr=0.05, optimizer="adam").to_config()
    sent = list(strategy.configure_train(server_round, strategy.global_arrays(), config, grid))
    assert all(offset_wire.offset_of(msg)[1] is None for msg in sent)  # no b to report on
    replies = grid.send_and_receive(sent)
    assert all(decode_stats(reply, 10) is None for reply in replies)
    _, metrics = strategy.aggregate_train(server_round, replies)
    return metrics


def test_voted_reports_step_the_offsets_on_the_model_the_vote_made():
    strategy, grid = _strategy(class_bias_report="voted"), _Recording()
    metrics = _voted_round(strategy, grid, 1)  # from round 1: the first vote is reported on
    assert metrics["class-stats-replies"] == 2 and np.abs(strategy.offset.bias).max() > 0
    assert sorted(query.metadata.dst_node_id for query, _ in grid.queries) == [21, 22]
    [(query, reply)] = [pair for pair in grid.queries if pair[0].metadata.dst_node_id == 21]
    assert offset_wire.offset_of(query)[0] == "11"
    np.testing.assert_array_equal(offset_wire.offset_of(query)[1], np.zeros(10))
    voted = strategy.evaluation_model(strategy.global_arrays())
    voted[-1].bias.data.zero_()  # the model the vote made, with the offsets it was sent
    expected = class_stats(voted, tiny_client_data().train, None, 10)
    got = decode_stats(reply, 10)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_allclose(got.units, expected.units, atol=2)
    bias = strategy.offset.bias.copy()
    _voted_round(strategy, grid, 2)
    np.testing.assert_array_equal(offset_wire.offset_of(grid.queries[2][0])[1], bias)


def test_a_malformed_voted_report_is_rejected_and_the_others_count():
    spoil = MetricRecord({"class-ids": [11], "class-counts": [1],
                          "class-probs": [PROB_UNITS] + [0] * 9})
    strategy = _strategy(class_bias_report="voted")
    metrics = _voted_round(strategy, _Recording(spoil), 1)
    assert metrics["class-stats-replies"] == 1
    assert strategy.rejected[1][0]["field"] == "class-stats/class-ids"


class _Unanswered(_Recording):
    """Nodes whose ClientApp answers train messages only."""

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        messages = list(messages)
        if messages[0].metadata.message_type == "query":
            return []
        return super().send_and_receive(messages, timeout)


def test_unanswered_voted_reports_leave_the_offsets_and_say_why(caplog):
    strategy = _strategy(class_bias_report="voted")
    metrics = _voted_round(strategy, _Unanswered(), 1)
    assert metrics["class-stats-replies"] == 0 and not strategy.offset.bias.any()
    assert "fedmask.client.query_reply" in caplog.text


def test_class_bias_report_is_checked_at_start():
    with pytest.raises(ValueError, match="class-bias-report.*voted"):
        _strategy(class_bias_report="later")
    with pytest.raises(ValueError, match="class-bias-report.*'none'"):
        _strategy(class_bias_report="voted", class_bias="none")
