"""ClientApp body: per-message seeds and where a node's data comes from."""

import torch

from fedmask import config as run_config
from fedmask.client.node import message_seed, node_data
from fedmask.nn.placement import Placement

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


def test_loader_workers_reach_the_loaders_and_pinning_waits_for_cuda():
    cfg = run_config.parse({"data-root": DATA_ROOT, "train-limit": 50, "loader-workers": 2})
    data, _ = node_data(cfg, {"partition-id": 0, "num-partitions": 4})
    assert (data.train.num_workers, data.test.num_workers) == (2, 2)
    assert not data.train.pin_memory  # on the CPU: nothing to pin for
    cuda = Placement(torch.device("cuda"))  # only read for its type: no CUDA needed
    data, _ = node_data(cfg, {"partition-id": 0, "num-partitions": 4}, cuda)
    assert data.train.pin_memory and data.test.pin_memory
    unpinned = run_config.parse({"data-root": DATA_ROOT, "pin-memory": False})
    assert not node_data(unpinned, {"partition-id": 0, "num-partitions": 4},
                         cuda)[0].train.pin_memory


def test_data_path_node_config_overrides_the_partition(tmp_path):
    cfg = run_config.parse({"data-root": str(tmp_path / "unused"), "train-limit": 40})
    data, partition = node_data(cfg, {"data-path": DATA_ROOT})
    assert partition == 0 and data.num_train == 40
