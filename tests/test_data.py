"""Tests for fedmask.data.datasets on the real MNIST/FashionMNIST files, read from a
read-only copy of the test data (whatever the permissions of the original)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmask.data import datasets as data

from conftest import DATA_ROOT

DATASET = "fashion-mnist"

pytestmark = pytest.mark.skipif(
    not (Path(DATA_ROOT) / "FashionMNIST" / "raw").is_dir(), reason="test data missing"
)


def _snapshot(root: Path) -> set[tuple[str, int, int]]:
    return {
        (str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*")
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the test data's archives (not what other tests extracted next to
    them, nor the cache) with every write bit removed, as a shared mount is."""
    copy = tmp_path_factory.mktemp("read-only") / "data"
    shutil.copytree(DATA_ROOT, copy, ignore=shutil.ignore_patterns("cache", "*-ubyte"))
    for path in [copy, *copy.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return copy


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache for the module, also exported as FEDMASK_CACHE."""
    path = tmp_path_factory.mktemp("fedmask-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMASK_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def labels(root: Path, cache_root: Path) -> np.ndarray:
    return data.load_split(DATASET, root, train=True).tensors[1].numpy()


def test_load_split_mirrors_read_only_root(root: Path, cache_root: Path) -> None:
    before = _snapshot(root)
    train = data.load_split(DATASET, root, train=True, cache_root=cache_root)
    test = data.load_split(DATASET, str(root), train=False)
    assert _snapshot(root) == before and not list(root.rglob("*-ubyte"))
    assert (cache_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()

    for split, size in ((train, 60000), (test, 10000)):
        x, y = split.tensors
        assert x.shape == (size, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (size,) and y.dtype == torch.int64
        assert set(y.unique().tolist()) == set(range(10))
    x = train.tensors[0]
    assert abs(x.mean().item()) < 0.05 and 0.9 < x.std().item() < 1.1
    assert data.load_split(DATASET, root, train=True) is train


def test_load_split_mnist(root: Path, cache_root: Path) -> None:
    x, y = data.load_split("mnist", root, train=False).tensors
    assert x.shape == (10000, 1, 28, 28) and int(y.max()) == 9
    assert abs(x.mean().item()) < 0.1
    assert data.DATASETS["mnist"].in_channels == x.shape[1]


def test_load_split_unknown_dataset(root: Path) -> None:
    with pytest.raises(ValueError, match="dataset.*fashion-mnist"):
        data.load_split("imagenet", root, train=True)


def test_missing_dataset_raises_file_not_found(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(2)
    try:
        with pytest.raises(FileNotFoundError, match="data-root") as info:
            data.load_split("mnist", root, train=True, cache_root=tmp_path / "cache")
    finally:
        socket.setdefaulttimeout(previous)
    assert str(root / "MNIST" / "raw") in str(info.value)


@pytest.mark.parametrize("scheme", data.PARTITIONS)
def test_partitions_disjoint_cover_and_seeded(labels: np.ndarray, scheme: str) -> None:
    parts = data.partition_indices(labels, 7, scheme, seed=0, alpha=0.3)
    assert len(parts) == 7 and all(p.dtype == np.int64 and len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)
    if scheme == "shards":
        assert len(labels) - 14 <= len(joined) <= len(labels)
        assert joined.min() >= 0 and joined.max() < len(labels)
    else:
        np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))

    same = data.partition_indices(labels, 7, scheme, seed=0, alpha=0.3)
    other = data.partition_indices(labels, 7, scheme, seed=1, alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_is_more_label_skewed_than_iid(labels: np.ndarray) -> None:
    def max_label_share(scheme: str) -> float:
        parts = data.partition_indices(labels, 10, scheme, seed=0, alpha=0.3)
        return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))

    assert max_label_share("iid") < 0.15
    assert max_label_share("dirichlet") > max_label_share("iid") + 0.2


def test_partition_indices_rejects_bad_arguments() -> None:
    labels = np.arange(100) % 10
    with pytest.raises(ValueError, match="partition.*iid"):
        data.partition_indices(labels, 4, "random", seed=0)
    with pytest.raises(ValueError, match="alpha"):
        data.partition_indices(labels, 4, "dirichlet", seed=0, alpha=0.0)


def test_split_train_test() -> None:
    indices = np.arange(100, 200)
    train, test = data.split_train_test(indices, 0.2, seed=3)
    assert len(train) == 80 and len(test) == 20
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), indices)
    again = data.split_train_test(indices, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(train, data.split_train_test(indices, 0.2, seed=4)[0])


def _client(root: Path, partition_id: int = 2, **overrides) -> data.ClientData:
    kwargs = dict(
        dataset=DATASET,
        data_root=root,
        partition_id=partition_id,
        num_partitions=10,
        partition="dirichlet",
        alpha=0.3,
        seed=0,
        batch_size=32,
    )
    return data.client_data(**(kwargs | overrides))


def test_client_data_sizes(root: Path, labels: np.ndarray) -> None:
    full = _client(root)
    part = data.partition_indices(labels, 10, "dirichlet", seed=0, alpha=0.3)[2]
    assert full.num_train + full.num_test == len(part)
    assert full.num_test == round(0.2 * len(part))
    assert len(full.train.dataset) == full.num_train
    assert len(full.test.dataset) == full.num_test
    x, y = next(iter(full.train))
    assert x.shape == (32, 1, 28, 28) and y.shape == (32,)
    assert set(full.train.dataset.tensors[1].tolist()) <= set(labels[part].tolist())

    limited = _client(root, train_limit=100)
    assert (limited.num_train, limited.num_test) == (100, 25)
    assert len(limited.train.dataset) == 100 and len(limited.test.dataset) == 25
    for client in (full, limited):  # the training labels per class, every class listed
        torch.testing.assert_close(client.label_counts,
                                   torch.bincount(client.train.dataset.tensors[1], minlength=10))


def test_client_data_is_deterministic(root: Path, cache_root: Path) -> None:
    first, second = _client(root), _client(root)
    torch.testing.assert_close(next(iter(first.train)), next(iter(second.train)))
    torch.testing.assert_close(next(iter(first.test)), next(iter(second.test)))
    other = _client(root, partition_id=3)
    assert not torch.equal(next(iter(first.test))[0], next(iter(other.test))[0])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"partition_id": 10}, "partition-id"),
        ({"partition_id": -1}, "partition-id"),
        ({"dataset": "svhn"}, "dataset"),
        ({"partition": "pathological"}, "partition"),
    ],
)
def test_client_data_rejects_bad_arguments(root: Path, cache_root: Path, overrides: dict,
                                            key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _client(root, **overrides)


def test_central_test(root: Path, cache_root: Path) -> None:
    loader = data.central_test(DATASET, root, batch_size=64, limit=500)
    assert len(loader.dataset) == 500
    x, y = next(iter(loader))
    full_x, full_y = data.load_split(DATASET, root, train=False).tensors
    torch.testing.assert_close(x, full_x[:64])
    assert torch.equal(y, full_y[:64])
    assert len(data.central_test(DATASET, root, batch_size=64).dataset) == 10000


@pytest.mark.parametrize("spec", list(data.DATASETS.values()), ids=list(data.DATASETS))
def test_spec_names_the_torchvision_class_and_its_files(spec: data.DatasetSpec) -> None:
    cls = spec.tv_class
    assert cls.__name__ == spec.tv_name
    files = (cls.base_folder, cls.filename) if hasattr(cls, "base_folder") else (cls.__name__,)
    assert spec.entries == files


def test_a_fresh_process_reads_the_disk_cache_without_heavy_imports(root: Path,
                                                                   cache_root: Path) -> None:
    client, test = _client(root), data.central_test(DATASET, root, batch_size=64)
    code = (
        "import sys\n"
        "from fedmask.data import datasets as data\n"
        f"c = data.client_data('{DATASET}', '{root}', 2, 10, 'dirichlet', 0.3, 0, 32)\n"
        f"t = data.central_test('{DATASET}', '{root}', 64)\n"
        "x, y = c.train.dataset.tensors\n"
        "print(c.num_train, len(t.dataset), float(x.sum()), int(y.sum()), "
        "sorted({'torchvision', 'datasets', 'flwr_datasets'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "FEDMASK_CACHE": str(cache_root)}, check=True)
    x, y = client.train.dataset.tensors
    assert done.stdout.split() == [str(client.num_train), str(len(test.dataset)),
                                   str(float(x.sum())), str(int(y.sum())), "[]"]


def test_validation_set_is_held_out_from_every_client(root: Path, labels: np.ndarray) -> None:
    held = set(data.validation_indices(len(labels), 2000, seed=0).tolist())
    assert len(held) == 2000
    parts = data._train_partitions(DATASET, root, data._resolve_cache(None), 10,
                                   "dirichlet", 0, 0.5, 2000)
    seen = np.concatenate(parts)
    assert len(seen) == len(labels) - 2000 and len(set(seen.tolist())) == len(seen)
    assert held.isdisjoint(seen.tolist())
    loader = data.central_validation(DATASET, root, 256, 2000, seed=0)
    x, y = data.load_split(DATASET, root, train=True).tensors
    first = sorted(held)[:256]
    torch.testing.assert_close(next(iter(loader)), [x[first], y[first]])


def test_validation_size_must_leave_training_data() -> None:
    with pytest.raises(ValueError, match="validation-size"):
        data.validation_indices(100, 100, seed=0)
