"""The edge benchmark's pure parts (benchmarks/edge.py): options, the split of a
round's wall time, time to target, the bytes check and the summary, on hand-made
results (no run: the benchmark itself is run by hand, as root)."""

import pytest

import edge


def client(node_id, start_s=3.0, client_s=2.0, up=1000, down=4000, failed=False):
    return {"node_id": node_id, "bytes_up": up, "bytes_down": down, "failed": failed,
            "client_s": client_s, "start_s": start_s}


def record(rnd, accuracy, wall_s=10.0, clients=None, bytes_up=2000, bytes_down=8000):
    return {"round": rnd, "accuracy": accuracy, "wall_s": wall_s, "aggregate_s": 0.5,
            "bytes_up": bytes_up, "bytes_down": bytes_down, "array_bytes_up": bytes_up - 800,
            "array_bytes_down": bytes_down - 800,
            "clients": clients if clients is not None else [client(1), client(2)]}


def results(accuracies, wall_s=10.0, initial_accuracy=0.1, initial_s=1.0):
    return {"initial": {"accuracy": initial_accuracy, "wall_s": initial_s, "bytes_up": 0,
                        "bytes_down": 0, "array_bytes_up": 0, "array_bytes_down": 0,
                        "failed_clients": []},
            "rounds": [record(i + 1, a, wall_s) for i, a in enumerate(accuracies)]}


def test_named_and_custom_profiles_parse_to_bits_per_second():
    assert edge.parse_profiles(["slow", "medium", "unlimited", "edge=500kbit/2mbit"]) == {
        "slow": {"up": 10**6, "down": 5 * 10**6},
        "medium": {"up": 10 * 10**6, "down": 50 * 10**6}, "unlimited": {},
        "edge": {"up": 500_000, "down": 2 * 10**6}}


@pytest.mark.parametrize("item", ["fast", "x=1mbit", "x=1mbit/", "=1mbit/2mbit",
                                  "x=1mbit/2parsecs", "x=0mbit/1mbit"])
def test_a_bad_profile_is_refused_naming_the_option(item):
    with pytest.raises(ValueError, match=f"--profiles: .*{item}"):
        edge.parse_profiles([item])


def test_a_profile_named_twice_is_refused():
    with pytest.raises(ValueError, match="--profiles: a profile is named twice"):
        edge.parse_profiles(["slow", "slow=1mbit/2mbit"])


@pytest.mark.parametrize(("argv", "option"), [
    (["--profiles", "fast"], "--profiles"), (["--target", "1.5"], "--target"),
    (["--rounds", "0"], "--rounds"), (["--nodes", "0"], "--nodes"),
    (["--methods", "fedsgd"], "--methods")])
def test_bad_options_exit_2_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        edge.parse_args(["--data-root", "data", *argv])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_lab_args_limit_every_node_or_none_and_give_each_the_simulations_threads():
    threads = ["--node-env", "0:OMP_NUM_THREADS=1", "--node-env", "1:OMP_NUM_THREADS=1"]
    assert edge.lab_args({"up": 10**6, "down": 5 * 10**6}, 2) == [
        "--link", "up=1000000bit,down=5000000bit", *threads]
    assert edge.lab_args({}, 2) == threads


def test_the_default_methods_are_one_entry_per_method_fedavg_first():
    assert edge.METHODS == ["fedavg", "hidenseek", "fedpm", "mpfl", "ssfl",
                            "fedsparsify-global"]


def test_a_round_splits_by_its_slowest_node():
    rnd = record(1, 0.5, wall_s=12.0, clients=[
        client(1, start_s=3.0, client_s=2.0),
        client(2, start_s=4.0, client_s=3.0, up=125_000, down=625_000),  # slowest
        client(3, start_s=9.0, client_s=9.0, failed=True)])  # failed: not waited for
    parts = edge.split(rnd, {"up": 10**6, "down": 5 * 10**6})
    assert parts == pytest.approx({"start_s": 4.0, "compute_s": 3.0, "server_s": 0.5,
                                   "transfer_s": 12.0 - 4.0 - 3.0 - 0.5, "wire_s": 2.0})
    assert edge.split(rnd, {})["wire_s"] == 0.0  # unlimited
    assert edge.split(rnd, {"up": 10**6})["wire_s"] == pytest.approx(1.0)


def test_a_round_without_answers_is_all_transfer():
    rnd = record(1, 0.5, wall_s=6.0, clients=[client(1, failed=True)])
    assert edge.split(rnd, {"up": 10**6}) == {"start_s": 0.0, "compute_s": 0.0,
                                              "server_s": 0.5, "transfer_s": 5.5,
                                              "wire_s": 0.0}


def test_a_reply_without_start_s_is_refused():
    rnd = record(2, 0.5, clients=[client(7, start_s=None)])
    with pytest.raises(ValueError, match="round 2: node 7 has no start_s"):
        edge.split(rnd, {})


def test_time_to_target_counts_round_0_and_every_round_until_reached():
    run = results([0.3, 0.6, 0.7], wall_s=10.0, initial_s=1.5)
    rows = edge.per_round(run, {})
    assert [r["elapsed_s"] for r in rows] == [11.5, 21.5, 31.5]
    assert edge.time_to_target(run, rows, 0.6) == 21.5
    assert edge.time_to_target(run, rows, 0.7) == 31.5
    assert edge.time_to_target(run, rows, 0.05) == 1.5  # the initial model is there already


def test_a_target_never_reached_is_none():
    run = results([0.3, 0.4])
    assert edge.time_to_target(run, edge.per_round(run, {}), 0.5) is None


def test_equal_bytes_pass_the_check():
    assert edge.bytes_mismatches(results([0.3, 0.4]), results([0.3, 0.5])) == []


def test_a_byte_more_in_any_rounds_payload_or_round_0_fails_the_check():
    sim, dep = results([0.3, 0.4]), results([0.3, 0.4])
    dep["rounds"][1]["array_bytes_up"] += 1
    dep["initial"].update(array_bytes_up=30, array_bytes_down=50)  # sim: no query
    assert edge.bytes_mismatches(sim, dep) == [
        {"round": 0, "field": "array_bytes_up", "simulation": 0, "deployed": 30},
        {"round": 0, "field": "array_bytes_down", "simulation": 0, "deployed": 50},
        {"round": 2, "field": "array_bytes_up", "simulation": 1200, "deployed": 1201}]


def test_flowers_framing_is_not_a_mismatch():
    sim, dep = results([0.3]), results([0.3])
    dep["rounds"][0]["bytes_up"] += 170  # deployed replies' 64-hex message ids
    assert edge.bytes_mismatches(sim, dep) == []


def test_a_different_number_of_rounds_fails_the_check():
    assert edge.bytes_mismatches(results([0.3, 0.4]), results([0.3])) == [
        {"round": None, "field": "rounds", "simulation": 2, "deployed": 1}]


def test_summary_targets_a_share_of_the_baselines_final_accuracy():
    runs = {"fedavg": results([0.5, 0.8], wall_s=20.0), "mask": results([0.75, 0.78])}
    out = edge.summary(runs, {}, None)
    assert out["fedavg"]["target"] == pytest.approx(edge.TARGET_SHARE * 0.8)  # 0.72
    assert out["fedavg"]["time_to_target_s"] == 41.0
    assert out["mask"]["time_to_target_s"] == 11.0
    assert out["mask"]["speedup"] == pytest.approx(41.0 / 11.0)
    assert out["mask"]["round_speedup"] == pytest.approx(2.0)
    assert out["mask"]["mb"] == pytest.approx(2 * 10_000 / 1e6)
    never = edge.summary(runs, {}, 0.79)["mask"]
    assert never["time_to_target_s"] is None and never["speedup"] is None


def test_markdown_has_a_row_per_method_and_says_not_reached():
    profiles = {name: edge.summary({"fedavg": results([0.5, 0.8]),
                                    "mask": results([0.6, 0.7])}, {}, None)
                for name in ("slow", "unlimited")}
    table = edge.markdown(profiles)
    assert "| method | slow: s/round | slow: to target | slow: speedup | unlimited:" in table
    assert "| fedavg | 10.0 | 21.0 s | 1.00x | 10.0 | 21.0 s | 1.00x |" in table
    assert "| mask | 10.0 | not reached |  |" in table
    assert "Target accuracy: slow 0.7200, unlimited 0.7200" in table
