"""Tests for fedmask.nn.models: builders, seeded initialisation and the weight hash."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedmask.nn.models import (
    INITS,
    MODELS,
    build_model,
    cnn,
    num_prunable,
    seeded_init,
    weight_hash,
)
from fedmask.nn.pruning import prunable_names

SHAPES = [(1, 28), (3, 32)]  # (in_channels, image_size)
CASES = [(name, c, s) for name in ("cnn", "lenet", "conv4", "conv6") for c, s in SHAPES]
CASES.append(("resnet18", 3, 32))


def test_models_registry_names() -> None:
    assert set(MODELS) == {"cnn", "lenet", "conv4", "conv6", "resnet18"}


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_build_and_forward_shape(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 7, channels, size)
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_default_models_are_bias_free_and_non_affine(name: str, channels: int,
                                                     size: int) -> None:
    model = build_model(name, 10, channels, size)
    names = [n for n, _ in model.named_parameters()]
    assert names == prunable_names(model)
    assert all(n.endswith("weight") for n in names)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.bias is None
    # Norms use batch statistics only: no running buffers either.
    assert list(model.named_buffers()) == []


def test_default_norms() -> None:
    kinds = lambda m: {type(x) for x in m.modules()}  # noqa: E731
    assert nn.BatchNorm2d not in kinds(build_model("cnn", 10, 1, 28))
    assert nn.GroupNorm not in kinds(build_model("cnn", 10, 1, 28))
    conv4 = build_model("conv4", 10, 1, 28)
    bns = [m for m in conv4.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4
    assert all(not bn.affine and not bn.track_running_stats for bn in bns)
    conv6 = build_model("conv6", 10, 1, 28)
    assert len([m for m in conv6.modules() if isinstance(m, nn.BatchNorm2d)]) == 6
    resnet = build_model("resnet18", 10, 3, 32)
    gns = [m for m in resnet.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(not gn.affine for gn in gns)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


def test_prunable_layer_counts() -> None:
    assert len(prunable_names(build_model("cnn", 10, 1, 28))) == 4
    assert len(prunable_names(build_model("conv4", 10, 1, 28))) == 4 + 3
    assert len(prunable_names(build_model("conv6", 10, 1, 28))) == 6 + 3
    # stem + 8 blocks * 2 convs + 3 downsampling shortcuts + fc
    assert len(prunable_names(build_model("resnet18", 10, 3, 32))) == 1 + 16 + 3 + 1


def test_build_model_unknown_name() -> None:
    with pytest.raises(ValueError, match="model") as info:
        build_model("vgg16", 10, 3, 32)
    assert "vgg16" in str(info.value)
    assert "cnn" in str(info.value)


def test_num_prunable_cnn_28() -> None:
    model = build_model("cnn", 10, 1, 28)
    expected = 1 * 32 * 3 * 3 + 32 * 64 * 3 * 3 + 3136 * 128 + 128 * 10
    assert expected == 288 + 18432 + 401408 + 1280 == 421408
    assert num_prunable(model) == expected
    # Bias-free: every parameter is prunable.
    assert sum(p.numel() for p in model.parameters()) == expected


def test_num_prunable_excludes_biases_and_norms() -> None:
    model = _BiasedNet()
    # conv 3->4 3x3 = 108, linear 4*4*4 -> 5 = 320; biases and BN excluded.
    assert num_prunable(model) == 108 + 320


class _BiasedNet(nn.Module):
    """Small net with biases and an affine, tracking BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4, affine=True)
        self.fc = nn.Linear(4 * 4 * 4, 5, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("scheme", INITS)
def test_seeded_init_deterministic(scheme: str) -> None:
    torch.manual_seed(1)
    a = cnn(10, 1, 8)
    torch.manual_seed(2)
    b = cnn(10, 1, 8)
    assert not _state_equal(a, b)  # different default inits
    seeded_init(a, 123, scheme)
    seeded_init(b, 123, scheme)
    assert _state_equal(a, b)
    assert weight_hash(a) == weight_hash(b)
    seeded_init(b, 124, scheme)
    assert not _state_equal(a, b)
    assert weight_hash(a) != weight_hash(b)


def test_seeded_init_returns_model_and_leaves_global_rng() -> None:
    model = cnn(10, 1, 8)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert seeded_init(model, 9) is model
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_init_schemes_differ() -> None:
    hashes = {weight_hash(seeded_init(cnn(10, 1, 8), 0, s)) for s in INITS}
    assert len(hashes) == len(INITS)


def test_seeded_init_non_prunable_params() -> None:
    model = _BiasedNet()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(2.0, 3.0)
    seeded_init(model, 0)
    assert torch.equal(model.conv.bias, torch.zeros(4))
    assert torch.equal(model.fc.bias, torch.zeros(5))
    assert torch.equal(model.bn.weight, torch.ones(4))
    assert torch.equal(model.bn.bias, torch.zeros(4))
    # Prunable weights were re-drawn from the scheme, not filled.
    assert model.conv.weight.abs().max() < 2.0
    assert model.conv.weight.std() > 0


def test_seeded_init_same_prunable_weights_regardless_of_biases() -> None:
    """Prunable weights depend only on (seed, scheme, prunable shapes/order)."""
    with_bias = nn.Sequential(nn.Linear(6, 4, bias=True), nn.Linear(4, 3, bias=True))
    no_bias = nn.Sequential(nn.Linear(6, 4, bias=False), nn.Linear(4, 3, bias=False))
    seeded_init(with_bias, 11)
    seeded_init(no_bias, 11)
    assert torch.equal(with_bias[0].weight, no_bias[0].weight)
    assert torch.equal(with_bias[1].weight, no_bias[1].weight)


@pytest.mark.parametrize(("layer", "fan_in"), [
    (nn.Conv2d(3, 8, 5, bias=False), 3 * 5 * 5),
    (nn.Linear(50, 20, bias=False), 50),
    (nn.Conv2d(8, 8, 3, groups=2, bias=False), 4 * 3 * 3),
])
def test_signed_constant_values(layer: nn.Module, fan_in: int) -> None:
    seeded_init(layer, 3, "signed-constant")
    value = torch.tensor(math.sqrt(2.0 / fan_in), dtype=torch.float32)
    w = layer.weight
    assert torch.equal(w.abs(), value.expand_as(w))
    positive = (w > 0).float().mean().item()
    assert 0.3 < positive < 0.7  # both signs occur, roughly balanced


def test_kaiming_normal_std() -> None:
    layer = nn.Linear(1000, 1000, bias=False)
    seeded_init(layer, 0, "kaiming-normal")
    std = math.sqrt(2.0 / 1000)
    assert layer.weight.std().item() == pytest.approx(std, rel=0.01)
    assert abs(layer.weight.mean().item()) < 0.01 * std


def test_kaiming_uniform_bound_and_std() -> None:
    layer = nn.Conv2d(64, 128, 3, bias=False)  # fan_in = 576
    seeded_init(layer, 0, "kaiming-uniform")
    std = math.sqrt(2.0 / 576)
    bound = math.sqrt(3.0) * std
    w = layer.weight
    assert w.abs().max().item() <= bound + 1e-7
    assert w.abs().max().item() > 0.99 * bound
    assert w.std().item() == pytest.approx(std, rel=0.02)


def test_unknown_init() -> None:
    with pytest.raises(ValueError, match="init") as info:
        seeded_init(cnn(10, 1, 8), 0, "xavier")
    assert "xavier" in str(info.value)


def test_weight_hash_format_and_sensitivity() -> None:
    model = seeded_init(cnn(10, 1, 8), 0)
    h = weight_hash(model)
    assert len(h) == 16
    int(h, 16)  # hex
    assert weight_hash(model) == h
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    assert weight_hash(model) != h


def test_weight_hash_includes_buffers() -> None:
    a = seeded_init(_BiasedNet(), 0)
    b = seeded_init(_BiasedNet(), 0)
    assert weight_hash(a) == weight_hash(b)
    with torch.no_grad():
        b.bn.running_mean += 1.0
    assert weight_hash(a) != weight_hash(b)


def test_weight_hash_depends_on_architecture() -> None:
    a = seeded_init(cnn(10, 1, 8), 0)
    b = seeded_init(cnn(9, 1, 8), 0)
    assert weight_hash(a) != weight_hash(b)
