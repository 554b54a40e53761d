"""quickstart_fedmask: A Flower / PyTorch app.

The project's own model, data and train/test code, in the conventions of Flower's
``quickstart-pytorch``; nothing here knows about fedmask.
"""

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ImageFolderSplit(Dataset):
    """FashionMNIST images and labels read from a local folder, as dict samples
    ``{"img": tensor, "label": int}`` like a Hugging Face dataset gives them."""

    def __init__(self, root: Path, split: str, indices=None):
        raw = root / "FashionMNIST" / "raw"
        prefix = "train" if split == "train" else "t10k"
        images = _read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz")
        keep = np.arange(len(labels)) if indices is None else indices
        self.images = (torch.from_numpy(images[keep]).float().unsqueeze(1) / 255.0 - 0.5) / 0.5
        self.labels = torch.from_numpy(labels[keep].astype(np.int64))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"img": self.images[i], "label": self.labels[i]}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array (images or labels) from its .gz file."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def data_path() -> Path:
    """The folder holding ``FashionMNIST/raw/*.gz``: ``$QUICKSTART_DATA`` (Flower's
    quickstart downloads CIFAR-10 instead; this project reads a local copy)."""
    path = os.environ.get("QUICKSTART_DATA", "")
    if not path:
        raise RuntimeError("QUICKSTART_DATA: set it to the folder that holds FashionMNIST/raw "
                           "before the first `flwr run`")
    return Path(path).expanduser()


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """Load partition FashionMNIST data: 80% train (at most ``$QUICKSTART_TRAIN_LIMIT``
    images when set), 20% test."""
    order = np.random.default_rng(42).permutation(60000)
    partition = np.array_split(order, num_partitions)[partition_id]
    cut = int(0.8 * len(partition))
    limit = int(os.environ.get("QUICKSTART_TRAIN_LIMIT", "0"))
    train_idx = partition[:cut][:limit] if limit else partition[:cut]
    trainloader = DataLoader(ImageFolderSplit(data_path(), "train", train_idx),
                             batch_size=batch_size, shuffle=True)
    testloader = DataLoader(ImageFolderSplit(data_path(), "train", partition[cut:]),
                            batch_size=batch_size)
    return trainloader, testloader


def load_centralized_dataset():
    """Load test set and return dataloader."""
    return DataLoader(ImageFolderSplit(data_path(), "test"), batch_size=128)


def train(net, trainloader, epochs, lr, device, optimizer="sgd"):
    """Train the model on the training set (SGD with momentum 0.9, as Flower's
    quickstart, or Adam)."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer: {optimizer!r} is not one of ['sgd', 'adam']")
    if optimizer == "adam":
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / (epochs * len(trainloader))
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
