"""The in-process federation of the sweeps runs the code `flwr run` runs."""

import loopback
import numpy as np
import pytest
import torch
from flwr.app import Array
from loopback import run_federation

from compare import in_process
from conftest import SMALL, SMALL_NODES


def test_loopback_run_ends_where_the_flower_simulation_ends(hidenseek):
    """Every node trains each round (fraction-train 1) and a client's randomness
    depends on seed, round and partition only: the same final global state (on one
    thread, as each simulated client trains: other thread counts round float sums
    differently)."""
    results = in_process({**SMALL, "method": "hidenseek"}, SMALL_NODES)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["versions"]["torch"] == torch.__version__  # figures depend on the build
    assert results["final_arrays_sha256"] == hidenseek["final_arrays_sha256"]
    assert [r["accuracy"] for r in results["rounds"]] == [
        r["accuracy"] for r in hidenseek["rounds"]]


@pytest.mark.integration  # a whole federated run, in-process
def test_rejected_saliency_replies_are_recorded_before_round_one():
    """SSFL's query happens before round 1: a malformed reply is dropped, named in
    results.json's ``initial`` like any round's, and the run goes on."""
    honest = loopback.node.handle

    def handle(msg, context, phase):
        reply = honest(msg, context, phase)
        if phase == "query" and context.node_config["partition-id"] == 0:
            for record in reply.content.array_records.values():
                for key, array in list(record.items()):
                    record[key] = Array(np.full(array.numpy().shape, np.nan, np.float32))
        return reply

    results = run_federation({**SMALL, "method": "ssfl", "num-server-rounds": 1}, SMALL_NODES,
                             handle)
    [rejected] = results["initial"]["rejected_clients"]
    assert rejected["node"] == 1000 and rejected["reason"]
    assert results["initial"]["failed_clients"] == []
    assert results["rounds"][0]["aggregated"]


@pytest.mark.integration  # a whole federated run, in-process
def test_the_class_report_on_the_voted_model_is_a_query_each_round_and_its_bytes_counted():
    """``class-bias-report = "voted"``: each round's training nodes answer one query
    (their statistics at the voted model), whose bytes are the round's query
    traffic."""
    results = run_federation({**SMALL, "method": "hidenseek", "class-bias-report": "voted"},
                             SMALL_NODES, loopback.node.handle)
    for record in results["rounds"]:
        nodes = record["num_clients"]
        assert record["train_metrics"]["class-stats-replies"] == nodes
        assert record["query_bytes_up"] > 0 and record["query_bytes_down"] > 0
        assert record["eval_bytes_up"] > 0  # the other exchanges are as before
