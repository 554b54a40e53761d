"""Datasets, federated partitions and data loaders.

Images are loaded once per process from torchvision's on-disk layout into
normalized tensors; partitions come from ``flwr-datasets`` partitioners and
are a pure function of the labels, the scheme and the seed, so every client
and the server agree on them without communication.

Both are also kept on disk under the cache root (:mod:`fedmask.data.cache`),
keyed by the dataset files' names, sizes and times, so that a fresh process
(every simulated client's worker, every message of a deployed SuperNode) reads
them back without importing torchvision, ``datasets`` or ``flwr-datasets``
(about 4 s of imports on a 2-core CPU).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedmask.data import cache as disk_cache
from fedmask.data import hub

if TYPE_CHECKING:  # imported where used: they cost ~4 s of start-up
    from flwr_datasets.partitioner import Partitioner
    from torchvision.datasets import VisionDataset


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a supported image classification dataset.

    Attributes
    ----------
    name : str
        Key in :data:`DATASETS`.
    tv_name : str
        Name of the torchvision dataset class that reads (and downloads) the
        files (:attr:`tv_class`).
    entries : tuple[str, ...]
        The files/folders it has under a torchvision root.
    num_classes : int
        Number of labels.
    in_channels : int
        Image channels (1 for grayscale, 3 for RGB).
    image_size : int
        Height (= width) of the images in pixels.
    mean, std : tuple[float, ...]
        Per-channel normalization statistics of the training split.
    """

    name: str
    tv_name: str
    entries: tuple[str, ...]
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def tv_class(self) -> type[VisionDataset]:
        """The torchvision dataset class (importing torchvision)."""
        from torchvision import datasets  # noqa: PLC0415 - see the imports

        return getattr(datasets, self.tv_name)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", "MNIST", ("MNIST",), 10, 1, 28, (0.1307,), (0.3081,)),
        DatasetSpec("fashion-mnist", "FashionMNIST", ("FashionMNIST",), 10, 1, 28,
                    (0.2860,), (0.3530,)),
        DatasetSpec("cifar10", "CIFAR10", ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
                    10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        DatasetSpec("cifar100", "CIFAR100", ("cifar-100-python", "cifar-100-python.tar.gz"),
                    100, 3, 32,
                    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    )
}

PARTITIONS = ("iid", "dirichlet", "dirichlet-balanced", "shards")
VALIDATION_STREAM = 0x76616C  # seeds the validation hold-out apart from the partitions


@dataclass
class ClientData:
    """Local data of one federated client.

    Attributes
    ----------
    train, test : DataLoader
        Local training (shuffled) and evaluation (ordered) loaders.
    num_train, num_test : int
        Number of examples behind each loader.
    label_counts : torch.Tensor
        Training examples per class (index: label), for ``loss = "balanced"``.
    """

    train: DataLoader
    test: DataLoader
    num_train: int
    num_test: int
    label_counts: torch.Tensor


@dataclass(frozen=True)
class LoaderOptions:
    """How a client's DataLoaders feed its device: worker processes (0: the training
    process loads) and pinned host memory (for CUDA)."""

    workers: int = 0
    pin_memory: bool = False


IN_PROCESS = LoaderOptions()  # the default: no workers, nothing pinned


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``: a built-in dataset's, or that of the
    Hugging Face dataset (hub id or local folder, :mod:`fedmask.data.hub`) it names,
    measured on its training split (which is then loaded and cached)."""
    if name in DATASETS:
        return DATASETS[name]
    if not name:
        raise ValueError(f"dataset: empty; one of {sorted(DATASETS)}, a Hugging Face "
                         "dataset id or a local dataset folder")
    try:
        return _hub_spec(name, _resolve_cache(None))
    except hub.DatasetUnavailableError as err:
        raise hub.DatasetUnavailableError(f"{err} (built-in datasets: {sorted(DATASETS)})"
                                          ) from None


@functools.lru_cache(maxsize=8)
def _hub_spec(name: str, cache_root: Path) -> DatasetSpec:
    return DatasetSpec(name, "", (), **hub.describe(_hub_arrays(name, cache_root)))


def _hub_arrays(name: str, cache_root: Path) -> dict[str, np.ndarray]:
    """A Hugging Face dataset's decoded splits, through the disk cache."""
    return disk_cache.fetch(cache_root, ("hub", *hub.stamp(name)), lambda: hub.load(name))


def load_split(
    name: str,
    data_root: str | Path,
    train: bool,
    cache_root: str | Path | None = None,
) -> TensorDataset:
    """Load one split of a dataset as normalized tensors.

    Parameters
    ----------
    name : str
        Dataset key, one of :data:`DATASETS`.
    data_root : str or Path
        torchvision root (e.g. holding ``MNIST/raw/*.gz``). Missing files are
        downloaded when there is internet. A read-only root is mirrored into
        ``cache_root`` first, since torchvision writes extracted files next to
        the archives.
    train : bool
        Training split if True, test split otherwise.
    cache_root : str or Path, optional
        Writable mirror location; defaults to ``$FEDMASK_CACHE`` or
        ``~/.cache/fedmask/data``.

    Returns
    -------
    TensorDataset
        ``(x, y)`` with ``x`` float32 ``[N, C, H, W]`` normalized and ``y`` int64.
        The result is cached per process and shared: do not modify it in place.

    Raises
    ------
    ValueError
        If the dataset name is unknown.
    FileNotFoundError
        If the files are missing and cannot be downloaded.
    """
    get_spec(name)
    return _load_split_cached(name, _resolve(data_root), train, _resolve_cache(cache_root))


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    shards_per_partition: int = 2,
) -> list[np.ndarray]:
    """Split example indices into federated partitions.

    Parameters
    ----------
    labels : np.ndarray
        Label of every example, shape ``[N]``.
    num_partitions : int
        Number of partitions (clients).
    scheme : str
        One of :data:`PARTITIONS`: ``"iid"`` (random equal split),
        ``"dirichlet"`` (per-label Dirichlet(``alpha``) proportions),
        ``"dirichlet-balanced"`` (the same, with flwr-datasets' self-balancing,
        which keeps partition sizes near equal) or
        ``"shards"`` (label-sorted shards, ``shards_per_partition`` each).
    seed : int
        Seed; the same arguments always give the same partitions.
    alpha : float, default 0.5
        Dirichlet concentration (smaller is more label-skewed).
    shards_per_partition : int, default 2
        Shards per partition for ``"shards"``.

    Returns
    -------
    list[np.ndarray]
        One int64 index array per partition; partitions are disjoint.

    Raises
    ------
    ValueError
        On an unknown scheme or a non-positive ``alpha``.
    """
    from datasets import Dataset  # noqa: PLC0415 - see the imports

    # Arrow format: column reads stay vectorized instead of going row by row.
    table = Dataset.from_dict(
        {"label": np.asarray(labels), "idx": np.arange(len(labels), dtype=np.int64)}
    ).with_format("arrow")
    partitioner = _make_partitioner(
        len(labels), num_partitions, scheme, seed, alpha, shards_per_partition
    )
    partitioner.dataset = table.shuffle(seed=seed) if scheme == "iid" else table
    return [
        np.asarray(partitioner.load_partition(pid)["idx"][:], dtype=np.int64)
        for pid in range(num_partitions)
    ]


def split_train_test(
    indices: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``indices`` deterministically and split off a test part.

    Parameters
    ----------
    indices : np.ndarray
        Indices to split.
    test_fraction : float
        Fraction in ``[0, 1)`` that goes to the test part (rounded).
    seed : int
        Shuffle seed.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(train, test)`` index arrays.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test-fraction must be in [0, 1), got {test_fraction}")
    shuffled = np.random.default_rng(seed).permutation(np.asarray(indices))
    num_test = round(len(shuffled) * test_fraction)
    return shuffled[num_test:], shuffled[:num_test]


def client_data(
    dataset: str,
    data_root: str | Path,
    partition_id: int,
    num_partitions: int,
    partition: str,
    alpha: float,
    seed: int,
    batch_size: int,
    test_fraction: float = 0.2,
    train_limit: int = 0,
    validation_size: int = 0,
    loading: LoaderOptions = IN_PROCESS,
) -> ClientData:
    """Build the local train/test loaders of one client.

    The training split, less the central validation set
    (:func:`validation_indices`), is partitioned with :func:`partition_indices`;
    the client's part is split with :func:`split_train_test`.

    Parameters
    ----------
    dataset : str
        Dataset key, one of :data:`DATASETS`.
    data_root : str or Path
        torchvision root, see :func:`load_split`.
    partition_id : int
        This client's partition, in ``[0, num_partitions)``.
    num_partitions : int
        Total number of partitions.
    partition : str
        Partition scheme, one of :data:`PARTITIONS`.
    alpha : float
        Dirichlet concentration (used by ``"dirichlet"``).
    seed : int
        Seed of the partition, the local split and the training shuffle.
    batch_size : int
        Batch size of both loaders.
    test_fraction : float, default 0.2
        Fraction of the client's examples held out for local evaluation.
    train_limit : int, default 0
        Keep at most this many training examples (0 keeps all); the test part
        is capped proportionally (at least 1 example).
    validation_size : int, default 0
        Training examples held out from every client as the central validation set.
    loading : LoaderOptions, optional
        DataLoader workers and pinned memory.

    Returns
    -------
    ClientData
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id must be in [0, {num_partitions}), got {partition_id}"
        )
    if train_limit < 0:
        raise ValueError(f"train-limit must be >= 0, got {train_limit}")
    x, y = load_split(dataset, data_root, train=True).tensors
    parts = _train_partitions(dataset, _resolve(data_root), _resolve_cache(None),
                              num_partitions, partition, seed, alpha, validation_size)
    return split_loaders(x, y, parts[partition_id], batch_size, test_fraction, train_limit,
                         _derive_seed(seed, partition_id), loading)


def split_loaders(x: torch.Tensor, y: torch.Tensor, indices: np.ndarray, batch_size: int,
                  test_fraction: float, train_limit: int, seed: int,
                  loading: LoaderOptions = IN_PROCESS) -> ClientData:
    """A client's loaders over ``(x, y)[indices]``: a seeded train/test split,
    `train_limit` applied (the test part capped proportionally), seeded shuffling."""
    train_idx, test_idx = split_train_test(indices, test_fraction, seed)
    if train_limit:
        test_cap = max(1, math.ceil(train_limit * test_fraction / (1 - test_fraction)))
        train_idx, test_idx = train_idx[:train_limit], test_idx[:test_cap]
    generator = torch.Generator().manual_seed(seed)
    return ClientData(
        train=_loader(x, y, train_idx, batch_size, loading, generator),
        test=_loader(x, y, test_idx, batch_size, loading),
        num_train=len(train_idx),
        num_test=len(test_idx),
        label_counts=torch.bincount(y[torch.as_tensor(train_idx, dtype=torch.int64)],
                                    minlength=int(y.max()) + 1 if len(y) else 0),
    )


def validation_indices(num_examples: int, size: int, seed: int) -> np.ndarray:
    """The `size` training examples (of `num_examples`) held out from every client as
    the central validation set: a seeded random choice, sorted."""
    if not 0 <= size < num_examples:
        raise ValueError(f"validation-size must be in [0, {num_examples}), got {size}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, VALIDATION_STREAM]))
    return np.sort(rng.permutation(num_examples)[:size])


def central_validation(dataset: str, data_root: str | Path, batch_size: int, size: int,
                       seed: int) -> DataLoader:
    """An ordered loader over the central validation set (:func:`validation_indices`)."""
    x, y = load_split(dataset, data_root, train=True).tensors
    return _loader(x, y, validation_indices(len(y), size, seed), batch_size)


def central_test(
    dataset: str, data_root: str | Path, batch_size: int, limit: int = 0
) -> DataLoader:
    """Return an ordered loader over the test split (first ``limit`` examples if > 0)."""
    x, y = load_split(dataset, data_root, train=False).tensors
    size = min(limit, len(y)) if limit > 0 else len(y)
    return DataLoader(TensorDataset(x[:size], y[:size]), batch_size=batch_size)


def _resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _resolve_cache(cache_root: str | Path | None) -> Path:
    if cache_root is None:
        cache_root = os.environ.get("FEDMASK_CACHE") or "~/.cache/fedmask/data"
    return _resolve(cache_root)


@functools.lru_cache(maxsize=8)
def _load_split_cached(name: str, root: Path, train: bool, cache_root: Path) -> TensorDataset:
    if name not in DATASETS:
        arrays = _hub_arrays(name, cache_root)
        split = "train" if train else "test"
        return _to_tensors(get_spec(name), arrays[f"{split}_images"], arrays[f"{split}_labels"])
    spec = DATASETS[name]
    key = ("split", name, train, *_source_stamp(spec, root))

    def decode() -> dict[str, np.ndarray]:
        raw = _open(spec, root, train, cache_root)
        return {"images": np.asarray(raw.data), "labels": np.asarray(raw.targets)}

    arrays = disk_cache.fetch(cache_root, key, decode)
    return _to_tensors(spec, arrays["images"], arrays["labels"])


def _data_stamp(name: str, root: Path) -> tuple[str, ...]:
    """Cache key material of dataset `name`'s files (a built-in one under `root`)."""
    return _source_stamp(DATASETS[name], root) if name in DATASETS else hub.stamp(name)


def _source_stamp(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    """The dataset's files under `root` as ``path:size:mtime`` (cache key material)."""
    files = sorted(path for entry in spec.entries for path in
                   ([root / entry] if (root / entry).is_file() else (root / entry).rglob("*"))
                   if path.is_file())
    stats = [(path, path.stat()) for path in files]
    return (str(root), *(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}"
                         for path, st in stats))


def _open(spec: DatasetSpec, root: Path, train: bool, cache_root: Path) -> VisionDataset:
    """Open ``spec`` with torchvision, never writing into a read-only ``root``.

    A read-only root is read in place when already usable, else mirrored into
    ``cache_root`` and opened (extracted, downloaded) there.
    """
    if _is_writable(spec, root):
        return _download(spec, root, root, train)
    try:
        return spec.tv_class(str(root), train=train, download=False)
    except (RuntimeError, OSError):
        return _download(spec, root, _mirror(spec, root, cache_root), train)


def _download(spec: DatasetSpec, root: Path, target: Path, train: bool) -> VisionDataset:
    """Open ``spec`` from ``target`` (a copy of ``root`` or itself) with ``download=True``."""
    try:
        return spec.tv_class(str(target), train=train, download=True)
    except (RuntimeError, URLError) as err:
        mirrored = f" (mirrored to {target})" if target != root else ""
        raise FileNotFoundError(
            f"Dataset {spec.name!r} not found under data-root {root}{mirrored} and it "
            f"could not be downloaded. Expected torchvision layout: "
            f"{_layout_hint(spec, root)}. Cause: {err}"
        ) from err


def _layout_hint(spec: DatasetSpec, root: Path) -> str:
    cls = spec.tv_class
    if hasattr(cls, "base_folder"):
        return f"{root / cls.filename} or {root / cls.base_folder}/"
    files = ", ".join(filename for filename, _ in cls.resources)
    return f"{root / cls.__name__ / 'raw'}/ containing {files}"


def _is_writable(spec: DatasetSpec, root: Path) -> bool:
    """Whether ``root`` and the dataset's existing folders in it may be written.

    Permission bits are honoured even for the superuser, whom ``os.access``
    lets write anywhere on a writable file system.
    """
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    folders = [existing] + [
        Path(dirpath) for entry in spec.entries for dirpath, _, _ in os.walk(root / entry)
    ]
    return all(
        os.access(folder, os.W_OK)
        and os.stat(folder).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        for folder in folders
    )


def _mirror(spec: DatasetSpec, root: Path, cache_root: Path) -> Path:
    """Copy the dataset's files from ``root`` into ``cache_root`` (skipping same-size files)."""
    cache_root.mkdir(parents=True, exist_ok=True)
    for entry in spec.entries:
        source = root / entry
        files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        for file in files:
            dest = cache_root / file.relative_to(root)
            if not dest.exists() or dest.stat().st_size != file.stat().st_size:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, dest)
    return cache_root


def _to_tensors(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """Convert torchvision's uint8 ``.data``/``.targets`` into a normalized TensorDataset."""
    pixels = torch.as_tensor(images)
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    x = ((pixels.float() / 255.0 - mean) / std).contiguous()
    y = torch.as_tensor(labels, dtype=torch.int64)
    return TensorDataset(x, y)


def _make_partitioner(
    num_examples: int,
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float,
    shards_per_partition: int,
) -> Partitioner:
    from flwr_datasets.partitioner import (  # noqa: PLC0415 - see the imports
        DirichletPartitioner,
        IidPartitioner,
        ShardPartitioner,
    )

    if scheme == "iid":
        return IidPartitioner(num_partitions)
    if scheme in ("dirichlet", "dirichlet-balanced"):
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        return DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=max(1, min(10, num_examples // (4 * num_partitions))),
            self_balancing=scheme == "dirichlet-balanced",
            seed=seed,
        )
    if scheme == "shards":
        return ShardPartitioner(
            num_partitions,
            partition_by="label",
            num_shards_per_partition=shards_per_partition,
            seed=seed,
        )
    raise ValueError(f"Unknown partition {scheme!r}; allowed values: {list(PARTITIONS)}")


@functools.lru_cache(maxsize=8)
def _train_partitions(
    dataset: str,
    root: Path,
    cache_root: Path,
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float,
    validation_size: int = 0,
) -> tuple[np.ndarray, ...]:
    """Partitions of the training split less its `validation_size` held-out examples,
    cached per process and on disk (arrays are read-only)."""
    key = ("partitions", dataset, num_partitions, scheme, seed, alpha,
           *((f"validation:{validation_size}",) if validation_size else ()),
           *_data_stamp(dataset, root))

    def compute() -> dict[str, np.ndarray]:
        labels = load_split(dataset, root, train=True, cache_root=cache_root).tensors[1].numpy()
        rest = np.setdiff1d(np.arange(len(labels)),
                            validation_indices(len(labels), validation_size, seed))
        parts = partition_indices(labels[rest], num_partitions, scheme, seed, alpha)
        return {str(pid): rest[part] for pid, part in enumerate(parts)}

    arrays = disk_cache.fetch(cache_root, key, compute)
    parts = tuple(arrays[str(pid)] for pid in range(num_partitions))
    for part in parts:
        part.flags.writeable = False
    return parts


def _derive_seed(seed: int, partition_id: int) -> int:
    """Independent 32-bit seed for ``(seed, partition_id)``."""
    return int(np.random.SeedSequence([seed, partition_id]).generate_state(1)[0])


def _loader(
    x: torch.Tensor,
    y: torch.Tensor,
    indices: np.ndarray,
    batch_size: int,
    loading: LoaderOptions = IN_PROCESS,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Loader over ``(x, y)[indices]``; shuffled iff a ``generator`` is given."""
    index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    return DataLoader(
        TensorDataset(x[index], y[index]),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=loading.workers,
        pin_memory=loading.pin_memory,
    )
