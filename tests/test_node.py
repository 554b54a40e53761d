"""ClientApp body: per-message seeds and where a node's data comes from."""

from fedmask import config as run_config
from fedmask.client.node import message_seed, node_data

from conftest import DATA_ROOT


def test_message_seed_depends_only_on_run_round_partition_phase():
    assert message_seed(0, 1, 2, "train") == message_seed(0, 1, 2, "train")
    seeds = {message_seed(0, 1, 2, "train"), message_seed(1, 1, 2, "train"),
             message_seed(0, 2, 2, "train"), message_seed(0, 1, 3, "train"),
             message_seed(0, 1, 2, "evaluate")}
    assert len(seeds) == 5 and all(0 <= s < 2**64 for s in seeds)


def test_partition_of_data_root_by_default():
    cfg = run_config.parse({"data-root": DATA_ROOT, "train-limit": 50})
    data, partition = node_data(cfg, {"partition-id": 1, "num-partitions": 4})
    assert partition == 1 and data.num_train == 50


def test_data_path_node_config_overrides_the_partition(tmp_path):
    cfg = run_config.parse({"data-root": str(tmp_path / "unused"), "train-limit": 40})
    data, partition = node_data(cfg, {"data-path": DATA_ROOT})
    assert partition == 0 and data.num_train == 40
