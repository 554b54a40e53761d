"""quickstart_fedmask: the project's own model, data and train/test code.

Nothing here depends on fedmask: this is what an existing Flower project has.
"""

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """LeNet-style CNN, as in Flower's PyTorch quickstart (with biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _idx(path: Path) -> np.ndarray:
    """Read an IDX file (images or labels) from its .gz archive."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _split(data_path: str, prefix: str) -> TensorDataset:
    raw = Path(data_path).expanduser() / "FashionMNIST" / "raw"
    images = _idx(raw / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = _idx(raw / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (torch.from_numpy(images).unsqueeze(1) - 0.2860) / 0.3530
    return TensorDataset(x, torch.from_numpy(labels))


def load_data(partition_id: int, num_partitions: int, batch_size: int, data_path: str,
              train_limit: int = 0) -> tuple[DataLoader, DataLoader]:
    """This client's IID share of FashionMNIST: 80% train, 20% test loaders."""
    full = _split(data_path, "train")
    order = np.random.default_rng(42).permutation(len(full))
    part = np.array_split(order, num_partitions)[partition_id]
    cut = int(0.8 * len(part))
    train_idx, test_idx = part[:cut], part[cut:]
    if train_limit:
        train_idx = train_idx[:train_limit]
    train = TensorDataset(*full[torch.from_numpy(train_idx)])
    test = TensorDataset(*full[torch.from_numpy(test_idx)])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=256)


def load_centralized(data_path: str) -> DataLoader:
    """The FashionMNIST test split, for the server's evaluation."""
    return DataLoader(_split(data_path, "t10k"), batch_size=256)


def train(net: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """Plain SGD training; returns the mean loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(y), count + len(y)
    return total / max(count, 1)


@torch.no_grad()
def test(net: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(mean loss, accuracy) on `loader`."""
    net.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        out = net(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        count += len(y)
    return loss / count, correct / count
