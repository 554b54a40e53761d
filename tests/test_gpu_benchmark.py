"""benchmarks/gpu.py runs on any CPU in its smoke mode and writes its figures."""

import json

import gpu
import pytest

from conftest import DATA_ROOT


@pytest.mark.integration  # a whole federated run, in-process
def test_gpu_benchmark_smoke_mode_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    gpu.main(["--smoke", "--device", "cpu", "--run-config", f'data-root="{DATA_ROOT}"',
              "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["smoke"]
    assert {row["network"] for row in result["speeds"]} == set(gpu.KINDS)
    assert all(row["cpu_steps_s"] > 0 and row["speedup"] > 0 for row in result["speeds"])
    assert [row["method"] for row in result["paper_style"]] == ["hidenseek", "fedavg"]
    assert all(len(row["accuracy"]) == 2 for row in result["paper_style"])
