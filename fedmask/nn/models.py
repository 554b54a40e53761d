"""Seeded model builders, initialisation schemes and the weight hash.

Models describe architecture only. Mask methods rebuild bit-identical frozen
weights from a 64-bit seed with :func:`seeded_init` (numbers from
:mod:`fedmask.nn.portable_random`, alike on every CPU); :func:`weight_hash` lets a
client prove it built the same network as the server.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from fedmask.nn.portable_random import PortableStream, kaiming_std
from fedmask.nn.pruning import prunable_names

INITS = ("kaiming-normal", "kaiming-uniform", "signed-constant")


def _norm2d(kind: str, channels: int) -> nn.Module:
    """Non-affine normalisation using batch statistics, so the net is seed + masks."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels, affine=False)
    return nn.Identity()


def cnn(num_classes: int, in_channels: int, image_size: int, norm: str = "none") -> nn.Module:
    """Small bias-free CNN: two 3x3 convs with max-pooling, two linear layers."""
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), _norm2d(norm, 32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), _norm2d(norm, 64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 128, bias=False), nn.ReLU(),
        nn.Linear(128, num_classes, bias=False),
    )


def lenet(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """The CNN of Flower's quickstart-pytorch (PyTorch's 60-minute blitz): 5x5 convs of
    6 and 16 channels with max-pooling, linear layers of 120 and 84; bias-free."""
    side = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120, bias=False), nn.ReLU(),
        nn.Linear(120, 84, bias=False), nn.ReLU(),
        nn.Linear(84, num_classes, bias=False),
    )


def _conv_stack(widths: list[int], in_channels: int, norm: str) -> list[nn.Module]:
    """Pairs of 3x3 convs, each pair followed by 2x2 max-pooling (supermask papers)."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                   _norm2d(norm, width), nn.ReLU()]
        in_channels = width
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    return layers


def _conv_net(widths: list[int], num_classes: int, in_channels: int, image_size: int,
              norm: str) -> nn.Module:
    side = image_size // 2 ** (len(widths) // 2)
    return nn.Sequential(
        *_conv_stack(widths, in_channels, norm),
        nn.Flatten(),
        nn.Linear(widths[-1] * side * side, 256, bias=False), nn.ReLU(),
        nn.Linear(256, 256, bias=False), nn.ReLU(),
        nn.Linear(256, num_classes, bias=False),
    )


def conv4(num_classes: int, in_channels: int, image_size: int, norm: str = "batch") -> nn.Module:
    """Conv-4 of the supermask papers (64-64-pool-128-128-pool, FC 256-256)."""
    return _conv_net([64, 64, 128, 128], num_classes, in_channels, image_size, norm)


def conv6(num_classes: int, in_channels: int, image_size: int, norm: str = "batch") -> nn.Module:
    """Conv-6 of the supermask papers (Conv-4 plus 256-256-pool)."""
    return _conv_net([64, 64, 128, 128, 256, 256], num_classes, in_channels, image_size, norm)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm2d(norm, cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm2d(norm, cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          _norm2d(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18(num_classes: int, in_channels: int, image_size: int, norm: str = "group") -> nn.Module:
    """CIFAR ResNet-18 (3x3 stem, no max-pool), bias-free, non-affine norms."""
    del image_size  # global average pooling makes the net size-agnostic
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                               _norm2d(norm, 64), nn.ReLU()]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes, bias=False)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": cnn, "lenet": lenet, "conv4": conv4, "conv6": conv6, "resnet18": resnet18,
}


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                output_bias: bool = False) -> nn.Module:
    """Build architecture `name` (one of :data:`MODELS`) with its default norm; with
    `output_bias` its output layer has a bias (HideNseek's ``class-bias``)."""
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; allowed: {sorted(MODELS)}")
    model = MODELS[name](num_classes, in_channels, image_size)
    if output_bias:
        layers = cast(nn.Sequential, model)
        layers[-1] = nn.Linear(cast(nn.Linear, layers[-1]).in_features, num_classes)
    return model


def has_output_bias(model: nn.Module) -> bool:
    """Whether a model :func:`build_model` built has a bias in its output layer."""
    return isinstance(model, nn.Sequential) and getattr(model[-1], "bias", None) is not None


def _init_weight(weight: torch.Tensor, scheme: str, stream: PortableStream) -> None:
    """Fill `weight` with the stream's next ``weight.numel()`` draws under `scheme`
    (float64, rounded once to the weight's dtype)."""
    std, count = kaiming_std(weight[0].numel()), weight.numel()
    if scheme == "kaiming-normal":
        values = stream.normal(count) * std
    elif scheme == "kaiming-uniform":
        bound = math.sqrt(3.0) * std
        values = (stream.uniform(count) * 2.0 - 1.0) * bound
    else:  # signed-constant: +-sqrt(2/fan_in)
        values = stream.signs(count) * std
    weight.copy_(torch.from_numpy(values.reshape(weight.shape)))


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int, scheme: str = "kaiming-normal") -> nn.Module:
    """Re-initialise every parameter of `model` deterministically from `seed`.

    Prunable weights (Conv/Linear) follow `scheme`, in :func:`prunable_names`
    order, drawn one after another from the seed's
    :class:`~fedmask.nn.portable_random.PortableStream`; every other parameter is
    set to 1 (scales) or 0 (biases), so that any architecture is fully determined
    by (seed, scheme).
    """
    if scheme not in INITS:
        raise ValueError(f"init: unknown scheme {scheme!r}; allowed: {list(INITS)}")
    stream = PortableStream(seed)
    prunable = set(prunable_names(model))
    params = dict(model.named_parameters())
    for name in prunable_names(model):
        _init_weight(params[name], scheme, stream)
    for name, param in params.items():
        if name not in prunable:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
    return model


def weight_hash(model: nn.Module) -> str:
    """Short SHA-256 over every parameter and buffer (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def num_prunable(model: nn.Module) -> int:
    """Number of prunable weights N."""
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in prunable_names(model))
