"""The comparison harness (benchmarks/compare.py): its smoke profile end to end, every
method run (conftest.smoke: HideNseek and FedAvg through real Flower simulations, the
others in-process), and the completeness of what it writes."""

import json
import math

import pytest

from compare import (
    ENTRIES,
    PROFILES,
    ROUND_FIELDS,
    entry_configs,
    last_mean,
    main,
    markdown,
    over_seeds,
    report,
    seeded,
    swing,
)
from conftest import DATA_ROOT, SMALL_NODES, SMOKE


def test_smoke_profile_writes_every_method_round_and_figure(smoke, tmp_path):
    out = tmp_path / "smoke"
    run_config = {**SMOKE["run_config"], "data-root": DATA_ROOT}
    table = report("smoke", smoke.runs, SMOKE["rounds"], SMALL_NODES, run_config, out)
    for entry in ENTRIES:  # progress while it ran: every round of every entry
        for rnd in (1, 2):
            assert any(line.split()[:3] == [entry, "round", f"{rnd}/2"] for line in smoke.progress)
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["profile"] == "smoke" and results["run_config"] == run_config
    assert list(results["per_round"]) == list(ENTRIES) == [r["entry"] for r in results["summary"]]
    for entry, rounds in results["per_round"].items():
        assert results["entry_config"][entry]["method"] == ENTRIES[entry]["method"]
        assert [r["round"] for r in rounds] == [1, 2], entry
        for row in rounds:
            assert set(row) == set(ROUND_FIELDS)
            assert 0 < row["local_accuracy"] <= 1, (entry, row)  # every node evaluates
            numbers = {k: v for k, v in row.items() if k != "personal_accuracy"}
            assert all(math.isfinite(v) for v in numbers.values()), (entry, row)
            assert 0 < row["uplink_bpp"] and row["client_s_max"] >= row["client_s_mean"] > 0
            assert 0 <= row["overhead_share"] < 1 and row["aggregate_s"] > 0
            assert 0 < row["cumulative_mb_up"] and 0 < row["cumulative_mb_down"]
        assert rounds[1]["cumulative_mb_up"] > rounds[0]["cumulative_mb_up"]
        personal = rounds[-1]["personal_accuracy"]
        assert (personal is not None) == (entry in ("hidenseek", "fedavg")), entry  # FedAvg-FT
    fedavg, hidenseek = results["per_round"]["fedavg"][0], results["per_round"]["hidenseek"][0]
    assert fedavg["uplink_bpp"] > 32 > 1 > hidenseek["uplink_bpp"]  # float32 vs sign bits
    assert results["summary"][0]["uplink_vs_base"] == 1.0  # fedavg is the baseline
    model_bpp = {row["entry"]: row["model_bpp"] for row in results["summary"]}
    assert model_bpp["hidenseek"] < 2 < 32 < model_bpp["fedavg"]  # bits vs float32 weights
    run_s = [row["run_s"] for row in results["summary"]]
    assert min(run_s) > 0 and results["total_s"] == pytest.approx(sum(run_s))
    ceiling = results["ceiling"]
    assert {ceiling[e]["network"] for e in ENTRIES} == {"fedavg", "hidenseek", "fedpm"}
    assert ceiling["mpfl"] == ceiling["ssfl"] == ceiling["fedavg"]  # one dense training
    for row in results["summary"]:
        figure = ceiling[row["entry"]]
        assert 0 < figure["accuracy"] <= 1 and figure["steps"] == 2 * 20  # min-local-steps
        assert row["of_ceiling"] == pytest.approx(row["accuracy"] / figure["accuracy"])
        assert row["swing"] == pytest.approx(abs(
            results["per_round"][row["entry"]][1]["accuracy"]
            - results["per_round"][row["entry"]][0]["accuracy"]))
    assert table == out.with_suffix(".md").read_text()
    assert len(table.splitlines()) == 2 + len(ENTRIES)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_profile_entry_config_overrides_only_its_entries():
    configs = entry_configs(PROFILES["standard"], ["fedavg", "hidenseek"], {"lr": 0.0, "x": 1})
    assert configs["fedavg"] == {"lr": 0.02, "x": 1, "method": "fedavg"}
    assert configs["hidenseek"] == {"lr": 0.0, "x": 1, "method": "hidenseek"}


def test_unknown_profile_or_method_is_refused(capsys):
    for argv in (["--profile", "huge"], ["--methods", "fedavg", "sgd"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "invalid choice" in capsys.readouterr().err


def test_counts_below_one_are_refused_naming_the_option(capsys):
    for option in ("--parallel", "--rounds", "--num-supernodes"):
        with pytest.raises(SystemExit):
            main([option, "0"])
        err = capsys.readouterr().err
        assert option in err and "must be an integer >= 1, got 0" in err


def test_swing_is_the_largest_round_to_round_change_of_the_last_rounds():
    rounds = [{"accuracy": a} for a in (0.1, 0.9, 0.5, 0.6, 0.55)]
    assert swing(rounds, last=3) == pytest.approx(0.1)
    assert swing(rounds) == pytest.approx(0.8)
    assert swing(rounds[:1]) == 0.0


def test_seeds_run_every_entry_with_consecutive_seeds():
    configs = {"fedavg": {"method": "fedavg", "seed": 5}, "hidenseek": {"method": "hidenseek"}}
    assert seeded(configs, 1) is configs
    runs = seeded(configs, 3)
    assert list(runs) == [f"{e}-seed{s}" for e in ("fedavg", "hidenseek") for s in range(3)]
    assert [runs[f"fedavg-seed{s}"]["seed"] for s in range(3)] == [5, 6, 7]
    assert [runs[f"hidenseek-seed{s}"]["seed"] for s in range(3)] == [0, 1, 2]


def _row(entry: str, accuracy: float, mb_up: float, personal: float | None = None) -> dict:
    figures = {k: 0.5 for k in ("run_s", "density", "mb_down", "uplink_bpp", "client_s_mean",
                                "aggregate_s", "wall_s", "accuracy_vs_base", "ceiling",
                                "of_ceiling", "swing", "last10_accuracy", "uplink_vs_base",
                                "model_bytes", "model_bpp", "model_vs_float32")}
    return {**figures, "entry": entry, "accuracy": accuracy, "mb_up": mb_up,
            "personal_accuracy": personal, "last10_personal_accuracy": personal,
            "last10_local_accuracy": accuracy}


def test_over_seeds_reports_means_and_standard_deviations():
    rows = [_row("fedavg-seed0", 0.8, 10.0), _row("fedavg-seed1", 0.6, 10.0),
            _row("hidenseek-seed0", 0.7, 0.1, 0.9), _row("hidenseek-seed1", 0.5, 0.1, 0.7)]
    fedavg, hidenseek = over_seeds(rows)
    assert fedavg["entry"] == "fedavg" and fedavg["seeds"] == 2
    assert fedavg["accuracy"] == pytest.approx(0.7)
    assert fedavg["accuracy_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std
    assert fedavg["personal_accuracy"] is None and "personal_accuracy_std" not in fedavg
    assert hidenseek["personal_accuracy"] == pytest.approx(0.8)
    assert hidenseek["accuracy_vs_base"] == pytest.approx(-0.1)
    assert hidenseek["uplink_vs_base"] == pytest.approx(0.01)
    assert "mb_up_std" not in hidenseek  # only accuracy figures carry a spread
    table = markdown([fedavg, hidenseek])
    assert "| fedavg | 0.7000 ± 0.1414 |" in table and "| 0.8000 ± 0.1414 |" in table


def test_last_mean_skips_rounds_without_the_figure():
    rounds = [{"personal_accuracy": v} for v in (0.1, None, 0.6, None, 0.8)]
    assert last_mean(rounds, "personal_accuracy", last=4) == pytest.approx(0.7)
    assert last_mean(rounds[:2], "personal_accuracy", last=1) is None  # none in the last round
