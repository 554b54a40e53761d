"""benchmarks/robustness.py: each attack changes what its method aggregates, stays a
valid message, and the smoke mode writes the table."""

import functools
import json

import pytest
import robustness
from loopback import run_federation

from conftest import DATA_ROOT

TINY = {**robustness.BASE, **robustness.SMOKE, "data-root": DATA_ROOT,
        "num-server-rounds": 1, "seed": 3}


@pytest.mark.integration  # a whole federated run, in-process
@pytest.mark.parametrize("method", robustness.METHODS)
def test_each_attack_is_valid_and_changes_the_global_state(method):
    runs = {count: run_federation({**TINY, "method": method}, 3, functools.partial(
        robustness.answer, adversaries=count, scale=4.0)) for count in (0, 1)}
    assert all(not r["rounds"][-1]["rejected_clients"] for r in runs.values())
    assert runs[0]["rounds"][-1]["num_clients"] == runs[1]["rounds"][-1]["num_clients"] == 3
    assert runs[0]["final_arrays_sha256"] != runs[1]["final_arrays_sha256"]


@pytest.mark.integration  # a whole federated run, in-process
def test_smoke_mode_writes_json_table_and_plot(tmp_path):
    code = robustness.main(["--smoke", "--rounds", "1", "--clients", "4", "--parallel", "1",
                            "--methods", "hidenseek", "fedavg", "--fractions", "0", "0.25",
                            "--run-config", f'data-root="{DATA_ROOT}"', "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "robustness.json").read_text())
    assert [(r["method"], r["adversaries"]) for r in result["runs"]] == [
        ("hidenseek", 0), ("hidenseek", 1), ("fedavg", 0), ("fedavg", 1)]
    table = (tmp_path / "robustness.md").read_text()
    assert "| hidenseek |" in table and "f = 0.25" in table
    assert (tmp_path / "robustness.png").stat().st_size > 0


def test_a_majority_of_adversaries_is_refused():
    with pytest.raises(SystemExit):
        robustness.main(["--fractions", "0.5"])
