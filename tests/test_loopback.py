"""The in-process federation of the sweeps runs the code `flwr run` runs."""

from loopback import run_federation

from conftest import SMALL, SMALL_NODES


def test_loopback_run_ends_where_the_flower_simulation_ends(hidenseek):
    """Every node trains each round (fraction-train 1) and a client's randomness
    depends on seed, round and partition only: the same final global state."""
    results = run_federation({**SMALL, "method": "hidenseek"}, SMALL_NODES)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["final_arrays_sha256"] == hidenseek["final_arrays_sha256"]
    assert [r["accuracy"] for r in results["rounds"]] == [
        r["accuracy"] for r in hidenseek["rounds"]]
