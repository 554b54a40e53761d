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
