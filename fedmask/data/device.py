"""A device's own data (``data-path`` node config) instead of a partition of a dataset.

`data-path` is either a folder in torchvision's layout for the run's dataset
(``FashionMNIST/raw/*.gz``, ``cifar-10-batches-py/``, ...), whose training split
is all this node's data, or an image folder with one sub-folder per class
named by the class index (``0/``, ``1/``, ...), images of any size and format
Pillow reads: they are converted to the dataset's channels and size and
normalized with its statistics, so they fit the run's model.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from fedmask.data.datasets import (
    IN_PROCESS,
    ClientData,
    LoaderOptions,
    get_spec,
    load_split,
    split_loaders,
)


def _is_image_folder(root: Path) -> bool:
    return any(child.is_dir() and child.name.isdigit() for child in root.iterdir())


@functools.lru_cache(maxsize=2)
def _image_folder(root: Path, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of `root` as normalized tensors shaped for `dataset`; labels from
    the class folder names."""
    from torchvision import datasets as tv_datasets  # noqa: PLC0415 - ~2 s to import,
    from torchvision import transforms  # noqa: PLC0415 - only image folders need it

    spec = get_spec(dataset)
    mode = transforms.Grayscale() if spec.in_channels == 1 else transforms.Lambda(
        lambda img: img.convert("RGB"))
    folder = tv_datasets.ImageFolder(str(root), transform=transforms.Compose([
        mode, transforms.Resize((spec.image_size, spec.image_size)), transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std)]))
    labels = [int(name) for name in folder.classes]
    if max(labels) >= spec.num_classes:
        raise ValueError(f"data-path: class folder {max(labels)} is not a {dataset} label "
                         f"(0..{spec.num_classes - 1})")
    x = torch.stack([folder[i][0] for i in range(len(folder))])
    y = torch.tensor([labels[target] for _, target in folder.samples])
    return x, y


def device_data(data_path: str, dataset: str, batch_size: int, test_fraction: float,
                train_limit: int, seed: int,
                loading: LoaderOptions = IN_PROCESS) -> ClientData:
    """This device's loaders over everything in `data_path` (see the module docstring)."""
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data-path: {root} is not a folder")
    if _is_image_folder(root):
        x, y = _image_folder(root.resolve(), dataset)
    else:
        x, y = load_split(dataset, root, train=True).tensors
    if len(y) == 0:
        raise ValueError(f"data-path: no images in {root}")
    return split_loaders(x, y, np.arange(len(y)), batch_size, test_fraction, train_limit,
                         seed, loading)
