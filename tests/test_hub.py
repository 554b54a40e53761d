"""Hugging Face datasets as `dataset` (fedmask.data.hub): local folders written by
the tests themselves (nothing is downloaded: the suite runs with the hub offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from fedmask import config as run_config
from fedmask.data.datasets import client_data, get_spec, load_split
from fedmask.launch import run_simulation

from conftest import SMALL, SMALL_NODES

CLASSES = 4


def _split(count: int, seed: int, size: int = 16, mode: str = "L") -> dict:
    """Images whose class is a bright horizontal band: learnable in a round or two."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    images = []
    for label in labels:
        pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
        pixels[label * 4:(label + 1) * 4, :] += 180
        picture = PILImage.fromarray(pixels)
        images.append(picture.convert(mode))
    return {"img": images, "label": labels.tolist()}


def write_parquet(folder: Path, train: int = 400, test: int = 100, mode: str = "L") -> Path:
    """A dataset folder of train/test parquet files, as one downloads from the hub."""
    features = Features({"img": Image(), "label": ClassLabel(num_classes=CLASSES)})
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train, 0), ("test", test, 1)):
        Dataset.from_dict(_split(count, seed, mode=mode), features=features).to_parquet(
            str(folder / f"{name}.parquet"))
    return folder


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMASK_CACHE", str(tmp_path / "cache"))


def test_a_parquet_folder_is_a_dataset(tmp_path):
    folder = write_parquet(tmp_path / "bands")
    spec = get_spec(str(folder))
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (CLASSES, 1, 16)
    train = load_split(str(folder), "unused", train=True)
    assert tuple(train.tensors[0].shape) == (400, 1, 16, 16)
    assert abs(float(train.tensors[0].mean())) < 1e-4  # normalised with its own statistics


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_its_partitions_come_from_flwr_datasets(tmp_path, scheme):
    folder = str(write_parquet(tmp_path / "bands"))
    sizes = [client_data(folder, "unused", pid, 3, scheme, 0.5, 0, 32, 0.2, 0).num_train
             + client_data(folder, "unused", pid, 3, scheme, 0.5, 0, 32, 0.2, 0).num_test
             for pid in range(3)]
    assert sum(sizes) == 400


def test_rgb_and_save_to_disk_folders_and_a_missing_test_split(tmp_path):
    features = Features({"image": Image(), "labels": ClassLabel(num_classes=CLASSES)})
    data = _split(200, 0, mode="RGB")
    Dataset.from_dict({"image": data["img"], "labels": data["label"]},
                      features=features).save_to_disk(str(tmp_path / "rgb"))
    spec = get_spec(str(tmp_path / "rgb"))
    assert (spec.in_channels, spec.image_size, len(spec.mean)) == (3, 16, 3)
    assert len(load_split(str(tmp_path / "rgb"), "unused", train=False)) == 40  # 20% of 200


def _renamed(tmp_path: Path, labels: list) -> str:
    """A folder whose columns no detection finds: images in `pixels` (bytes, not an
    Image feature), labels in `digit`."""
    data = _split(len(labels), 0)
    Dataset.from_dict({"pixels": [np.asarray(p).tolist() for p in data["img"]],
                       "digit": labels}).save_to_disk(str(tmp_path / "renamed"))
    return str(tmp_path / "renamed")


def test_columns_named_by_the_options_are_read(tmp_path):
    folder = _renamed(tmp_path, [i % CLASSES for i in range(50)])
    with pytest.raises(ValueError, match="no Image column .*name it with image-column"):
        get_spec(folder)
    cfg = run_config.parse({"dataset": folder, "image-column": "pixels",
                            "label-column": "digit"})
    spec = get_spec(cfg["dataset"])
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (CLASSES, 1, 16)
    train, test = (load_split(cfg["dataset"], "unused", train=part) for part in (True, False))
    assert tuple(train.tensors[0].shape) == (40, 1, 16, 16)  # 20% of 50 split off as test
    labels = train.tensors[1].tolist() + test.tensors[1].tolist()
    assert sorted(labels) == sorted(i % CLASSES for i in range(50))


def test_a_missing_or_unusable_column_names_its_option(tmp_path):
    folder = _renamed(tmp_path, ["cat", "dog"] * 10)
    with pytest.raises(ValueError, match=r"image-column: 'img' is not a column .*'pixels'"):
        get_spec(run_config.parse({"dataset": folder, "image-column": "img"})["dataset"])
    with pytest.raises(ValueError, match="label-column: 'digit' holds .*class indices"):
        get_spec(run_config.parse({"dataset": folder, "image-column": "pixels",
                                   "label-column": "digit"})["dataset"])


def test_images_of_several_sizes_are_refused(tmp_path):
    features = Features({"img": Image(), "label": ClassLabel(num_classes=CLASSES)})
    images = [PILImage.new("L", (16, 16)), PILImage.new("L", (20, 20))]
    DatasetDict({"train": Dataset.from_dict({"img": images, "label": [0, 1]},
                                            features=features)}).save_to_disk(str(tmp_path / "x"))
    with pytest.raises(ValueError, match="one size"):
        get_spec(str(tmp_path / "x"))


def test_a_hub_id_without_internet_says_how_to_provide_it(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "FEDMASK_CACHE": str(tmp_path / "cache")}
    code = ("from fedmask.data.datasets import get_spec\n"
            "get_spec('someone/not-downloaded-here')\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "DatasetUnavailableError: dataset: 'someone/not-downloaded-here'" in done.stderr
    assert "save_to_disk" in done.stderr


def test_a_flower_simulation_runs_on_a_local_hub_dataset(superlink, tmp_path):
    """One simulation, Dirichlet partitioned (every scheme's partitions: above)."""
    folder = write_parquet(tmp_path / "bands")
    config = {**SMALL, "method": "hidenseek", "dataset": str(folder), "partition": "dirichlet",
              "num-server-rounds": 2, "train-limit": 0, "test-limit": 0,
              "out-dir": str(tmp_path / "out")}
    results = run_simulation(superlink, config, SMALL_NODES, timeout=600)
    assert results["dataset"] == str(folder)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["rounds"][-1]["accuracy"] > 1.5 / CLASSES  # chance is 0.25
