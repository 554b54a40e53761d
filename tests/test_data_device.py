"""A device's own data folder: torchvision layout or an image folder per class."""

import numpy as np
import pytest
import torch
from PIL import Image

from fedmask.data.device import device_data

from conftest import DATA_ROOT


def _image_folder(root, classes=("0", "3"), per_class=5):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)  # RGB, odd size
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_is_shaped_for_the_dataset(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    data = device_data(str(root), "fashion-mnist", 4, 0.2, 0, seed=1)
    assert (data.num_train, data.num_test) == (8, 2)
    x, y = next(iter(data.train))
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    labels = torch.cat([y for _, y in data.train] + [y for _, y in data.test])
    assert sorted(labels.tolist()) == [0] * 5 + [3] * 5  # folder names are the labels


def test_image_folder_to_rgb_dataset(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    x, _ = next(iter(device_data(str(root), "cifar10", 4, 0.2, 0, seed=1).train))
    assert x.shape[1:] == (3, 32, 32)


def test_torchvision_layout_folder_is_all_this_nodes_data():
    data = device_data(DATA_ROOT, "fashion-mnist", 32, 0.2, 100, seed=0)
    assert data.num_train == 100 and data.num_test == 25
    x, _ = next(iter(data.train))
    assert x.shape[1:] == (1, 28, 28)


def test_label_outside_the_dataset_is_refused(tmp_path):
    root = _image_folder(tmp_path / "imgs", classes=("0", "12"), per_class=1)
    with pytest.raises(ValueError, match="data-path: class folder 12"):
        device_data(str(root), "fashion-mnist", 4, 0.2, 0, seed=1)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="data-path"):
        device_data(str(tmp_path / "nope"), "fashion-mnist", 4, 0.2, 0, seed=1)
