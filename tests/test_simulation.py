"""Every method's runs on FashionMNIST: the wire format and sizes each method's
replies really have, measured from the serialized messages. HideNseek and FedAvg
run through real ``flwr run`` simulations (Ray backend); the packed HideNseek run,
FedPM, SSFL, FedSparsify and MPFL in-process (compare.in_process: the same ServerApp
and ClientApp bodies without Ray). Every method runs through ``flwr run`` in
test_example_app.py."""

import math

import pytest

from compare import in_process
from conftest import SMALL, SMALL_NODES

# HideNseek's train reply carries ceil(K/8) payload bytes plus this many bytes of
# Flower framing (message header, object tree, record/array headers, npy header).
HIDENSEEK_OVERHEAD = 1800
# and, with class-bias on (the default), its class-stats MetricRecord: for C = 10
# classes at most C x (C + 2) varints of up to 3 bytes, and the record's framing.
CLASS_STATS_BYTES = 600
PACKED = {"mask-coding": "packed"}


@pytest.fixture(scope="module")
def hidenseek_packed():
    return in_process({**SMALL, "method": "hidenseek", **PACKED}, SMALL_NODES)


# The other runs are the entries of compare.py's smoke profile (conftest.smoke), at
# the default mask-coding = "entropy".
@pytest.fixture(scope="module")
def fedpm(smoke):
    return smoke.results["fedpm"]  # entropy-coded


@pytest.fixture(scope="module")
def ssfl(smoke):
    return smoke.results["ssfl"]  # density 0.5


@pytest.fixture(scope="module", params=["global", "local"])
def fedsparsify(request, smoke):
    return smoke.results[f"fedsparsify-{request.param}"]


@pytest.fixture(scope="module")
def fedavg(smoke):
    return smoke.results["fedavg"]


def _check_common(results, method, flwr_run=False):
    assert results["method"] == method
    assert (results["dataset"], results["model"], results["seed"]) == ("fashion-mnist", "cnn", 0)
    rounds = results["config"]["num-server-rounds"]
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    for record in results["rounds"]:
        assert record["num_clients"] == 3 and record["failed_clients"] == []
        assert record["wall_s"] > 0 and record["bytes_down"] > 0 and record["aggregate_s"] > 0
        assert all(client["client_s"] > 0 for client in record["clients"])
        assert 0.0 <= record["client_eval_metrics"]["accuracy"] <= 1.0
    assert results["rounds"][-1]["accuracy"] > 0.2  # chance is 0.1
    if flwr_run:  # Ray's actors live on: a fresh actor's first training step reports its start
        assert any(client["start_s"] for client in results["rounds"][0]["clients"])


def test_hidenseek_packed_uplink_is_the_sign_bits(hidenseek_packed):
    _check_common(hidenseek_packed, "hidenseek")
    n = hidenseek_packed["num_params"]
    kept = round(0.5 * n)
    assert hidenseek_packed["density"] == pytest.approx(kept / n)
    for record in hidenseek_packed["rounds"]:
        if record["round"] > 1:  # round 1 trains from no voted model: nothing to report
            assert record["train_metrics"]["class-stats-replies"] == record["num_clients"]
        for client in record["clients"]:
            payload = math.ceil(kept / 8)
            assert payload < client["bytes_up"] <= (payload + HIDENSEEK_OVERHEAD
                                                    + CLASS_STATS_BYTES)
    assert "personal-accuracy" in hidenseek_packed["rounds"][-1]["client_eval_metrics"]


def _down_up_per_client(record):
    """A round's measured downlink and uplink (train + evaluate) per client."""
    clients = record["num_clients"]
    return ((record["bytes_down"] + record["eval_bytes_down"]) / clients,
            (record["bytes_up"] + record["eval_bytes_up"]) / clients)


def test_hidenseek_sends_p_once_and_then_only_what_changed(hidenseek):
    first, second = hidenseek["rounds"]
    n, kept = hidenseek["num_params"], round(0.5 * hidenseek["num_params"])
    # round 1: P coded within each weight's output unit and |w| quantile (fresh
    # nodes), well below its packed N/8 bytes
    assert all(n / 400 < c["bytes_down"] < 0.3 * n / 8 for c in first["clients"])
    # evaluation of round 1: P held, g (all new) coded likewise; round 2: the nodes hold g
    assert kept / 64 < first["eval_bytes_down"] / 3 < math.ceil(kept / 8)
    assert all(c["bytes_down"] < 2000 for c in second["clients"])
    down, up = _down_up_per_client(second)
    assert down <= 2 * up, (down, up)


def test_fedavg_uplink_is_dense_float32(fedavg, hidenseek):
    _check_common(fedavg, "fedavg", flwr_run=True)
    n = fedavg["num_params"]
    up = [c["bytes_up"] for r in fedavg["rounds"] for c in r["clients"]]
    assert min(up) >= 4 * n
    hide_up = max(c["bytes_up"] for r in hidenseek["rounds"] for c in r["clients"])
    assert min(up) / hide_up > 50


def _coded_payload_matches_measured_bytes(results, coded_positions, extra=0):
    """Each reply's measured size is the entropy the server measured plus framing
    (and up to `extra` bytes beside the mask)."""
    n = results["num_params"]
    for record in results["rounds"]:
        ideal = record["train_metrics"]["mask-entropy-bpp"] * n / 8  # bytes, mean client
        mean_up = record["bytes_up"] / record["num_clients"]
        assert ideal * 0.98 < mean_up <= ideal * 1.02 + HIDENSEEK_OVERHEAD + extra
        assert mean_up < math.ceil(coded_positions / 8) + HIDENSEEK_OVERHEAD + extra


def test_fedpm_sends_one_entropy_coded_mask(fedpm):
    _check_common(fedpm, "fedpm")
    assert fedpm["config"]["init"] == "signed-constant"
    _coded_payload_matches_measured_bytes(fedpm, fedpm["num_params"])
    first, second = fedpm["rounds"]
    assert first["train_metrics"]["mask-entropy-bpp"] == pytest.approx(1.0, abs=0.01)
    assert second["train_metrics"]["mask-entropy-bpp"] < 1.0  # coded against a learnt theta
    for record in fedpm["rounds"]:
        assert 0.0 <= record["sampled-accuracy"] <= 1.0
        assert "sampled-accuracy" in record["client_eval_metrics"]
    # round 1: theta is 0.5 everywhere: coded within its distribution, a fresh node
    # gets a few hundred bytes instead of N uint8 codes
    assert all(c["bytes_down"] < 3000 for c in first["clients"])
    assert first["eval_bytes_down"] < 3 * fedpm["num_params"] / 2  # coded against theta held
    assert all(c["bytes_down"] < 2000 for c in second["clients"])  # they hold round 1's theta
    down, up = _down_up_per_client(second)
    assert down <= 2 * up, (down, up)


def test_hidenseek_entropy_codes_the_flips_losslessly(hidenseek, hidenseek_packed):
    _check_common(hidenseek, "hidenseek", flwr_run=True)
    assert hidenseek["config"]["mask-coding"] == "entropy"  # the default
    kept = round(0.5 * hidenseek["num_params"])
    _coded_payload_matches_measured_bytes(hidenseek, kept, CLASS_STATS_BYTES)
    coded = [r["train_metrics"]["mask-entropy-bpp"] for r in hidenseek["rounds"]]
    packed = [r["train_metrics"]["mask-entropy-bpp"] for r in hidenseek_packed["rounds"]]
    assert coded == pytest.approx(packed, rel=0.2)  # same seed, same training: same flips
    # the coding is exact: the same global model, for fewer bytes
    assert hidenseek["final_arrays_sha256"] == hidenseek_packed["final_arrays_sha256"]
    assert hidenseek["rounds"][-1]["bytes_up"] < hidenseek_packed["rounds"][-1]["bytes_up"] / 2


def test_mpfl_votes_a_mask_then_sends_only_kept_values(mpfl):
    _check_common(mpfl, "mpfl")
    n = mpfl["num_params"]
    phases = [r["train_metrics"]["phase"] for r in mpfl["rounds"]]
    assert phases == [1, 1, 2, 2]  # 0.7, then 0.49 -> 0.5 reached after two votes
    assert mpfl["rounds"][-1]["train_metrics"]["density"] == pytest.approx(0.5, abs=1e-5)
    for record, phase in zip(mpfl["rounds"], phases):
        bound = math.ceil(n / 8) if phase == 1 else 4 * round(0.5 * n)  # cnn: no dense tensors
        for client in record["clients"]:
            assert client["bytes_up"] <= bound + HIDENSEEK_OVERHEAD
    first_vote = mpfl["rounds"][0]["clients"][0]["bytes_up"]
    # round 1 votes over all N positions, entropy coded (the default): ~H(0.3) bits each
    assert mpfl["config"]["mask-coding"] == "entropy"
    assert 0.5 * math.ceil(n / 8) < first_vote < math.ceil(n / 8)


def test_ssfl_queries_saliency_then_sends_only_kept_values(ssfl, fedavg):
    _check_common(ssfl, "ssfl")
    n = ssfl["num_params"]
    assert ssfl["density"] == pytest.approx(0.5, abs=1e-5)
    # before round 1: every node sent N float16 saliencies
    assert 3 * 2 * n < ssfl["initial"]["bytes_up"] <= 3 * (2 * n + HIDENSEEK_OVERHEAD)
    for record in ssfl["rounds"]:
        assert record["train_metrics"]["phase"] == 2
        for client in record["clients"]:
            assert client["bytes_up"] <= 4 * round(0.5 * n) + HIDENSEEK_OVERHEAD
    dense = fedavg["rounds"][0]["clients"][0]["bytes_up"]
    assert ssfl["rounds"][0]["clients"][0]["bytes_up"] < 0.51 * dense


def test_fedsparsify_prunes_to_the_schedule_and_sends_only_kept_values(fedsparsify, fedavg):
    _check_common(fedsparsify, "fedsparsify")
    n, local = fedsparsify["num_params"], fedsparsify["config"]["fedsparsify-variant"] == "local"
    schedule = [1.0, 0.1]  # density after rounds 1-2: cubic from round 1 to 2, to sparsity 0.9
    densities = [r["train_metrics"]["density"] for r in fedsparsify["rounds"]]
    assert densities == pytest.approx(schedule, abs=0.01 if local else 1e-5)
    for record, before, target in zip(fedsparsify["rounds"], [1.0, *densities], schedule):
        # global: the values the mask of the previous round keeps; local: the client
        # prunes to this round's target first, and adds a record: its mask over the global one's
        values = round(target * n) if local else round(before * n)
        mask_bytes = math.ceil(round(before * n) / 8) + HIDENSEEK_OVERHEAD if local else 0
        for client in record["clients"]:
            assert 4 * values < client["bytes_up"] <= 4 * values + mask_bytes + HIDENSEEK_OVERHEAD
    dense, last = fedavg["rounds"][-1]["bytes_up"], fedsparsify["rounds"][-1]["bytes_up"]
    # global clients send the values of round 1's (dense) mask; local ones prune first
    assert last < 0.25 * dense if local else last == pytest.approx(dense, rel=0.01)
