"""Reply validation: unit checks, and property-based adversarial replies (hypothesis)
against every strategy's aggregation: never an exception out of the strategy, never
a changed global state from a rejected reply."""

import copy

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmask.client.settings import LocalSettings
from fedmask.nn.models import build_model, seeded_init
from fedmask.server.results import arrays_sha256
from fedmask.server.validation import accept, check_reply, mean_metrics, payload_bytes, reply_limit
from fedmask.wire.records import MAX_EXAMPLES, ReplyError
from strategies import MPFL, SSFL, FedAvg, FedPM, FedSparsify, HideNseek

from conftest import LoopbackGrid

NODES = [31, 32]


def _content(arrays=None, **metrics):
    metrics = {"num-examples": 10, "train-loss": 1.0, **metrics}
    return RecordDict({**(arrays or {}), "metrics": MetricRecord(metrics)})


def test_reply_limit_covers_a_dense_float32_model_and_a_mask():
    model = build_model("cnn", 10, 1, 12)
    numel = sum(t.numel() for t in model.state_dict().values())
    assert 4 * numel < reply_limit(model) < 4 * numel + numel / 8 + 70_000


@pytest.mark.parametrize("metrics, field", [
    ({"num-examples": 0}, "num-examples"), ({"num-examples": -3}, "num-examples"),
    ({"num-examples": MAX_EXAMPLES + 1}, "num-examples"), ({"num-examples": 2.0}, "num-examples"),
    ({"train-loss": float("nan")}, "train-loss"), ({"train-loss": float("inf")}, "train-loss"),
    ({"accuracy": [0.1, 0.2]}, "accuracy"),
])
def test_check_reply_names_the_bad_metric(client_reply, metrics, field):
    with pytest.raises(ReplyError) as info:
        check_reply(client_reply(_content(**metrics)), 10_000)
    assert info.value.field == field


def test_check_reply_bounds_the_size_before_decoding(client_reply):
    big = {"a": ArrayRecord({"x": Array(np.zeros(3000, np.float32))})}
    assert payload_bytes(_content(big)) >= 12_000
    with pytest.raises(ReplyError, match="exceed the limit of 10000"):
        check_reply(client_reply(_content(big)), 10_000)
    two = _content()
    two["other"] = MetricRecord({"x": 1.0})
    with pytest.raises(ReplyError, match=r"at most \[\]\), got \['metrics', 'other'\]"):
        check_reply(client_reply(two), 10_000)
    assert check_reply(client_reply(two), 10_000, records={"other"}) == 10  # declared: valid


def test_accept_orders_canonically_and_reports_rejections(client_reply):
    good = [client_reply(_content({"a": ArrayRecord({"x": Array(np.full(3, v, np.float32))})}),
                         node=n) for n, v in ((1, 1.0), (2, 2.0))]
    bad = client_reply(_content(**{"num-examples": -1}), node=3)
    failed = client_reply(None, node=4)
    forward, rejected = accept([*good, bad, failed], lambda m: m.metadata.src_node_id, 10_000)
    backward, _ = accept([failed, bad, *good[::-1]], lambda m: m.metadata.src_node_id, 10_000)
    assert [n for _, n in forward] == [n for _, n in backward]  # arrival order does not matter
    assert rejected == [{"node": 3, "field": "num-examples",
                         "reason": rejected[0]["reason"]}]


def test_mean_metrics_keeps_only_the_keys_every_reply_has():
    contents = [_content(accuracy=0.5), _content(**{"num-examples": 30}, extra=4.0)]
    merged = mean_metrics(contents, "num-examples")
    assert set(merged) == {"train-loss"} and merged["train-loss"] == pytest.approx(1.0)


def test_quorum_keeps_the_previous_state(client_reply):
    model = build_model("cnn", 10, 1, 12)
    strategy = FedAvg(model=model, min_train_nodes=2)
    good = client_reply(_content({"arrays": ArrayRecord(model.state_dict())}))
    assert strategy.aggregate_train(1, [good]) == (None, None)  # 1 valid < 2
    arrays, _ = strategy.aggregate_train(1, [good, client_reply(good.content, node=2)])
    assert arrays is not None


# --- property-based: adversarial replies to every strategy ----------------------------
def _fedavg(model):
    seeded_init(model, 1, "kaiming-normal")
    return FedAvg(model=model, min_train_nodes=1)


FACTORIES = {
    "hidenseek": lambda m: HideNseek(model=m, input_shape=(1, 12, 12), seed=1, synflow_iterations=2,
                                     min_train_nodes=1),
    "hidenseek-entropy": lambda m: HideNseek(model=m, input_shape=(1, 12, 12), seed=1,
                                             synflow_iterations=2,
                                             mask_coding="entropy", min_train_nodes=1),
    "fedpm": lambda m: FedPM(model=m, seed=1, mask_coding="entropy", min_train_nodes=1),
    "mpfl": lambda m: MPFL(model=m, seed=1, density=0.5, min_train_nodes=1),
    "ssfl": lambda m: SSFL(model=m, seed=1, density=0.5, min_train_nodes=1),
    "fedsparsify": lambda m: FedSparsify(model=m, num_server_rounds=3, seed=1, min_train_nodes=1),
    "fedsparsify-local": lambda m: FedSparsify(model=m, num_server_rounds=3, seed=1,
                                               fedsparsify_variant="local", min_train_nodes=1),
    "fedavg": _fedavg,
}
HANDLERS = {"hidenseek-entropy": "hidenseek", "fedsparsify-local": "fedsparsify"}
_CACHE = {}


def _prepared(name):
    """A strategy in round 2 (masks sent once), a real valid reply, and the state the
    strategy reaches from that reply alone."""
    if name not in _CACHE:
        strategy = FACTORIES[name](build_model("cnn", 10, 1, 12))
        grid = LoopbackGrid(HANDLERS.get(name, name), NODES)
        if name == "ssfl":
            strategy.find_mask(grid, 60)
        arrays = strategy.reference if name == "fedavg" else strategy.global_arrays()
        for server_round in (1, 2):
            config = LocalSettings(local_epochs=1, lr=0.05).to_config()
            replies = grid.send_and_receive(strategy.configure_train(server_round, arrays,
                                                                     config, grid))
            if server_round == 1:
                arrays = strategy.aggregate_train(1, replies)[0]
        baseline = copy.deepcopy(strategy)
        baseline.aggregate_train(2, replies[:1])
        _CACHE[name] = (strategy, replies[0], _fingerprint(baseline))
    return _CACHE[name]


def _fingerprint(strategy):
    state = {k: np.asarray(v).tobytes() for k, v in strategy.state_dict().items()}
    arrays = strategy.reference if isinstance(strategy, FedAvg) else strategy.global_arrays()
    return state, arrays_sha256(arrays)


FINITE_OR_NOT = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, 0.0])
BAD_EXAMPLES = st.sampled_from([0, -1, -(2**40), MAX_EXAMPLES + 1, 2**62, 0.5, 3.0])


@st.composite
def mutated(draw, content, range_coded=False):
    """`content` with one adversarial change, and whether that change makes it invalid.
    A `range_coded` payload may lose or gain trailing words its decoder never reads
    (the digest still proves the decoded mask is the one encoded), so a length
    change alone does not make it invalid."""
    arrays = {name: dict(record) for name, record in content.array_records.items()}
    metrics = dict(content.metric_records["metrics"])
    extra = {}
    kind = draw(st.sampled_from(["truncate", "extend", "dtype", "nonfinite", "drop-key",
                                 "drop-record", "extra-key", "examples", "metric",
                                 "oversized", "garbage", "shape", "extra-record"]))
    name = draw(st.sampled_from(sorted(arrays)))
    key = draw(st.sampled_from(sorted(arrays[name])))
    original = arrays[name][key].numpy()
    value = original.reshape(-1)
    cut = draw(st.integers(0, max(value.size - 1, 0)))
    invalid = True
    if kind == "truncate":
        arrays[name][key], invalid = Array(value[:cut]), value.size > 0 and not range_coded
    elif kind == "extend":
        arrays[name][key] = Array(np.concatenate([value, value[: cut + 1]]))
        invalid = not range_coded
    elif kind == "dtype":
        dtype = draw(st.sampled_from([np.float64, np.float16, np.int32, np.int8, np.bool_]))
        arrays[name][key], invalid = Array(value.astype(dtype)), dtype != original.dtype
    elif kind == "nonfinite":
        bad, number = value.astype(np.float32), draw(FINITE_OR_NOT)
        if bad.size:
            bad[cut] = number
        arrays[name][key] = Array(bad)
        invalid = original.dtype != np.float32 or (bad.size > 0 and not np.isfinite(number))
    elif kind == "drop-key":
        del arrays[name][key]
    elif kind == "drop-record":
        del arrays[name]
    elif kind == "extra-key":
        arrays[name]["junk"] = Array(np.zeros(draw(st.integers(0, 64)), np.float32))
    elif kind == "examples":
        metrics["num-examples"] = draw(BAD_EXAMPLES)
    elif kind == "metric":
        number = draw(FINITE_OR_NOT)
        metrics[draw(st.sampled_from(["train-loss", "accuracy"]))] = number
        invalid = not np.isfinite(number)
    elif kind == "oversized":
        arrays[name][key] = Array(np.zeros(10**6, np.float32))
    elif kind == "garbage":
        raw = draw(st.binary(min_size=0, max_size=256))
        arrays[name][key] = Array(dtype="float32", shape=(len(raw) // 4,),
                                  stype="numpy.ndarray", data=raw)
    elif kind == "shape":
        arrays[name][key] = Array(value.reshape(1, -1))
        invalid = original.shape != (1, value.size)
    else:
        extra["other"] = MetricRecord({"x": 1.0})
    out = RecordDict({n: ArrayRecord(r) for n, r in arrays.items()})
    out["metrics"] = MetricRecord(metrics)
    for n, record in extra.items():
        out[n] = record
    return out, invalid


def _finite(strategy):
    return all(np.isfinite(np.asarray(v, dtype=np.float64)).all()
               for v in strategy.state_dict().values())


@pytest.mark.parametrize("name", list(FACTORIES))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_adversarial_replies_never_raise_nor_change_state_when_rejected(name, data,
                                                                        client_reply):
    prototype, valid, baseline = _prepared(name)
    strategy = copy.deepcopy(prototype)
    content, invalid = data.draw(mutated(valid.content, getattr(prototype, "mask_coding", "")
                                         == "entropy"))
    strategy.aggregate_train(2, [client_reply(valid.content, node=NODES[0]),
                                 client_reply(content, node=99)])
    assert _finite(strategy)
    if invalid:
        assert [r["node"] for r in strategy.rejected[2]] == [99]
    if strategy.rejected.get(2):
        assert _fingerprint(strategy) == baseline


@pytest.mark.parametrize("name", ["hidenseek", "fedsparsify-local", "fedavg"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.dictionaries(st.text(min_size=1, max_size=8),
                            st.lists(st.floats(allow_nan=True), max_size=20), max_size=3),
       examples=st.one_of(st.integers(), st.floats()))
def test_random_replies_are_rejected_without_a_trace(name, junk, examples, client_reply):
    prototype, _, _ = _prepared(name)
    strategy = copy.deepcopy(prototype)
    before = _fingerprint(strategy)
    arrays = {k: ArrayRecord({k: Array(np.asarray(v, np.float32))}) for k, v in junk.items()}
    try:
        content = _content(arrays, **{"num-examples": examples})
    except (TypeError, ValueError):  # MetricRecord itself refuses some values
        content = _content(arrays)
    assert strategy.aggregate_train(2, [client_reply(content, node=99)]) == (None, None)
    assert _fingerprint(strategy) == before and len(strategy.rejected[2]) == 1
