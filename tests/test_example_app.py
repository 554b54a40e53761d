"""The example Flower project (examples/quickstart-fedmask) runs each strategy with `flwr run`."""

import pytest
from conftest import DATA_ROOT, ROOT

from fedmask.launch import run_simulation

EXAMPLE = ROOT / "examples" / "quickstart-fedmask"


@pytest.mark.parametrize("strategy", ["fedavg", "hidenseek"])
def test_example_runs_with_its_own_model_and_data(superlink, tmp_path, strategy):
    config = {"strategy": strategy, "data-path": DATA_ROOT, "num-server-rounds": 2,
              "train-limit": 1000, "fraction-evaluate": 1.0, "out-dir": str(tmp_path)}
    results = run_simulation(superlink, config, 2, app=EXAMPLE, timeout=600)
    assert results["strategy"] == strategy
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["accuracy"] > 0.2  # chance is 0.1: the project's Net learned
