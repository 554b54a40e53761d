"""The sweep's choice: the setting with the best mean validation score."""

import json

from sweep import DEFAULT_SETTINGS, GRID, candidates, choose, markdown, reusable, run_key

from fedmask.methods import REGISTRY


def _run(method, setting, dataset, accuracy):
    return {"method": method, "setting": setting, "options": GRID[method][setting],
            "dataset": dataset, "regime": "limited", "accuracy": accuracy,
            "config": {"method": method, "dataset": dataset}, "seconds": 1.0}


def test_best_mean_of_the_last_rounds_over_datasets_wins():
    runs = [_run("fedpm", 0, "mnist", [0.1, 0.9, 0.9]), _run("fedpm", 0, "fashion", [0.5, 0.5]),
            _run("fedpm", 1, "mnist", [0.9, 0.8, 0.8]), _run("fedpm", 1, "fashion", [0.7, 0.7])]
    chosen = choose(runs, score_rounds=2)
    assert chosen["fedpm"]["settings"]["0"]["mean"] == 0.7  # (0.9 + 0.5) / 2
    assert chosen["fedpm"]["settings"]["1"]["mean"] == 0.75
    assert chosen["fedpm"]["best"] == GRID["fedpm"][1]
    table = markdown(runs, chosen)
    assert f"**{', '.join(f'{k}={v}' for k, v in GRID['fedpm'][1].items())}**" in table
    assert "| 0.5000 | 0.9000 | 0.7000 |" in table  # fashion, mnist, mean


def test_candidates_score_on_validation_data_never_the_test_set():
    runs = candidates(["hidenseek"], ["mnist"], ["limited"], 3, {"data-root": "/d"})
    assert len(runs) == len(GRID["hidenseek"])
    for run in runs:
        assert run["config"]["validation-size"] > 0 and run["config"]["train-limit"] == 400
        assert run["config"]["num-server-rounds"] == 3 and run["config"]["data-root"] == "/d"


def test_reused_runs_are_matched_by_their_full_config(tmp_path):
    run = _run("fedavg", 0, "mnist", [0.5])
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"runs": [run]}))
    done = reusable(path)
    assert len(done) == 1 and list(done.values())[0]["accuracy"] == [0.5]


def test_reuse_ignores_where_the_data_lives(tmp_path):
    here, there = (candidates(["fedavg"], ["mnist"], ["limited"], 3, {"data-root": root})[0]
                   for root in ("/work/shared/data", "../shared/data"))
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"runs": [{**here, "accuracy": [0.5], "seconds": 1.0}]}))
    other = candidates(["fedavg"], ["mnist"], ["limited"], 3, {"data-root": "/d", "seed": 1})[0]
    done = reusable(path)
    assert run_key(there) in done and run_key(other) not in done


def test_steps_grid_runs_each_methods_default_setting_without_and_with_the_minimum():
    runs = candidates(["fedpm", "fedavg"], ["mnist"], ["standard"], 3, {}, grid="steps")
    assert [(r["method"], r["config"]["min-local-steps"]) for r in runs] == [
        ("fedpm", 0), ("fedpm", 20), ("fedavg", 0), ("fedavg", 20)]
    for run in runs:
        assert run["config"]["lr"] == DEFAULT_SETTINGS[run["method"]]["lr"]
        assert run["config"]["train-limit"] == 1200 and run["config"]["validation-size"] > 0
    assert set(DEFAULT_SETTINGS) == set(REGISTRY)
    for method, setting in DEFAULT_SETTINGS.items():  # the settings are fedmask's defaults
        assert setting["lr"] == REGISTRY[method].defaults["lr"]
        options = REGISTRY[method].options
        assert all(options[k].default == v for k, v in setting.items() if k != "lr")
