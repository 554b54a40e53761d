"""The comparison harness (benchmarks/compare.py): its smoke profile end to end, every
method through real Flower simulations, and the completeness of what it writes."""

import json
import math
import subprocess
import sys

from conftest import DATA_ROOT, ROOT

COMPARE = ROOT / "benchmarks" / "compare.py"


def test_smoke_profile_writes_every_method_round_and_figure(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run([sys.executable, str(COMPARE), "--profile", "smoke", "--run-config",
                           f"data-root={DATA_ROOT}", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round   1/2" in done.stdout  # progress while it runs
    sys.path.insert(0, str(COMPARE.parent))
    from compare import ENTRIES, ROUND_FIELDS  # noqa: PLC0415

    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results["per_round"]) == list(ENTRIES) and results["profile"] == "smoke"
    for entry, rounds in results["per_round"].items():
        assert [r["round"] for r in rounds] == [1, 2], entry
        for row in rounds:
            assert set(row) == set(ROUND_FIELDS)
            numbers = {k: v for k, v in row.items() if k != "personal_accuracy"}
            assert all(math.isfinite(v) for v in numbers.values()), (entry, row)
            assert 0 < row["uplink_bpp"] and row["client_s_max"] >= row["client_s_mean"] > 0
            assert 0 <= row["overhead_share"] < 1 and row["aggregate_s"] > 0
        personal = rounds[-1]["personal_accuracy"]
        assert (personal is not None) == (entry == "hidenseek"), entry
    fedavg, hidenseek = results["per_round"]["fedavg"][0], results["per_round"]["hidenseek"][0]
    assert fedavg["uplink_bpp"] > 32 > 1 > hidenseek["uplink_bpp"]  # float32 vs sign bits
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + len(ENTRIES)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
