"""Image classification datasets in Hugging Face ``datasets`` form.

``dataset`` may name, besides the built-in torchvision datasets, a Hugging Face
hub id (``"uoft-cs/cifar10"``, downloaded once into the ``datasets`` cache) or a
local folder: one written by ``Dataset(Dict).save_to_disk`` or holding data
files ``datasets.load_dataset`` reads (parquet, arrow, csv/json with an image
column, an image folder). The image column is the ``image-column`` option, else
the first of type ``Image`` (else ``img`` or ``image``); the label column is
``label-column``, else the first ``ClassLabel`` (else ``label``, ``labels`` or
``fine_label``). A chosen column travels with the name as one reference string
(:func:`reference`), so every function that takes a dataset name takes it.
Images must share one size; grayscale and RGB are kept as they are. The splits
used are ``train`` and ``test`` (a dataset without ``test`` gets a seeded 20%
of ``train``). Channels, size, classes and the normalisation statistics come
from the training split.

The decoded arrays are kept in fedmask's disk cache, so clients do not import
``datasets`` again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_COLUMNS = "::columns="
IMAGE_COLUMNS = ("img", "image")
LABEL_COLUMNS = ("label", "labels", "fine_label")
TEST_SHARE = 0.2


class DatasetUnavailableError(FileNotFoundError, ValueError):
    """The dataset is neither a local folder nor reachable on the hub (a bad
    ``dataset`` value as much as a missing file)."""


def reference(name: str, image_column: str = "", label_column: str = "") -> str:
    """Dataset `name` with the columns to read (empty: detected), as one string."""
    if not image_column and not label_column:
        return name
    return f"{name}{_COLUMNS}{json.dumps([image_column, label_column])}"


def parse_reference(ref: str) -> tuple[str, str, str]:
    """The name, image column and label column of a :func:`reference`."""
    name, _, columns = ref.partition(_COLUMNS)
    image_column, label_column = json.loads(columns) if columns else ("", "")
    return name, image_column, label_column


def is_local(ref: str) -> bool:
    """Whether the dataset `ref` names is a local folder (else a hub id)."""
    return Path(parse_reference(ref)[0]).expanduser().is_dir()


def stamp(ref: str) -> tuple[str, ...]:
    """Cache key material: the reference, and a local folder's files as
    ``path:size:mtime``."""
    if not is_local(ref):
        return (ref,)
    root = Path(parse_reference(ref)[0]).expanduser().resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return (ref, str(root), *(f"{p.relative_to(root)}:{p.stat().st_size}:"
                              f"{p.stat().st_mtime_ns}" for p in files))


def _open(name: str) -> Any:
    """The DatasetDict `name` names; DatasetUnavailableError saying how to provide it."""
    import datasets  # noqa: PLC0415 - imported only when a hub dataset is used

    path = Path(name).expanduser()
    try:
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.is_dir() else name)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, unreadable folder
        raise DatasetUnavailableError(
            f"dataset: {name!r} is not a built-in dataset, not a readable local folder, "
            f"and could not be loaded from the Hugging Face hub ({type(err).__name__}: "
            f"{err}). Without internet, load it once where there is internet "
            f"(`datasets.load_dataset({name!r}).save_to_disk(FOLDER)`) and set "
            f"dataset to that FOLDER; or set HF_DATASETS_OFFLINE=1 with it in the "
            f"datasets cache") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _column(features: Any, kind: str, names: tuple[str, ...], chosen: str, key: str) -> str:
    """Column `chosen` (the option `key`) if given, else the first column of feature
    type `kind`, else the first of `names` present."""
    if chosen:
        if chosen not in features:
            raise ValueError(f"{key}: {chosen!r} is not a column of the dataset; "
                             f"columns: {list(features)}")
        return chosen
    for column, feature in features.items():
        if type(feature).__name__ == kind:
            return str(column)
    for column in names:
        if column in features:
            return column
    raise ValueError(f"dataset: no {kind} column and none of {list(names)}; "
                     f"columns: {list(features)} (name it with {key})")


def _arrays(split: Any, image_column: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W] or [N, H, W, C] and int64 labels of one split."""
    image = _column(split.features, "Image", IMAGE_COLUMNS, image_column, "image-column")
    label = _column(split.features, "ClassLabel", LABEL_COLUMNS, label_column, "label-column")
    images = [np.asarray(picture, dtype=np.uint8) for picture in split[image]]
    shapes = {picture.shape for picture in images}
    if len(shapes) != 1:
        raise ValueError(f"dataset: images of {len(shapes)} different shapes "
                         f"({sorted(shapes)[:3]}...); fedmask needs one size")
    shape = shapes.pop()
    if len(shape) == 3 and shape[2] == 1:
        images = [picture[..., 0] for picture in images]
    if len(shape) not in (2, 3) or shape[0] != shape[1]:
        raise ValueError(f"dataset: images must be square H x W (x C), got {shape}")
    labels = np.asarray(split[label])
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ValueError(f"label-column: {label!r} holds {labels.dtype} values; fedmask "
                         "needs class indices 0, 1, ... (a ClassLabel or int column)")
    return np.stack(images), labels.astype(np.int64)


def load(ref: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The train and test images and labels of the dataset `ref` names."""
    name, image_column, label_column = parse_reference(ref)
    splits = _open(name)
    if "train" not in splits:
        raise ValueError(f"dataset: {name!r} has no 'train' split (splits: {list(splits)})")
    if "test" not in splits:
        splits = splits["train"].train_test_split(test_size=TEST_SHARE, seed=seed)
    train_x, train_y = _arrays(splits["train"], image_column, label_column)
    test_x, test_y = _arrays(splits["test"], image_column, label_column)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"dataset: train images are {train_x.shape[1:]}, test images "
                         f"{test_x.shape[1:]}; fedmask needs one size")
    return {"train_images": train_x, "train_labels": train_y,
            "test_images": test_x, "test_labels": test_y}


def describe(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Channels, image size, classes, mean and std (per channel, of the training
    images scaled to [0, 1])."""
    images = arrays["train_images"]
    channels = 1 if images.ndim == 3 else images.shape[3]
    pixels = images.reshape(len(images), images.shape[1], images.shape[2], channels) / 255.0
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    return {"in_channels": int(channels), "image_size": int(images.shape[1]),
            "num_classes": int(labels.max()) + 1,
            "mean": tuple(float(m) for m in pixels.mean(axis=(0, 1, 2))),
            "std": tuple(float(s) for s in pixels.std(axis=(0, 1, 2)))}
