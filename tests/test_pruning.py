"""Tests for fedmask.nn.pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmask.nn.pruning import (
    apply_flat_mask,
    flat_weights,
    keep_largest,
    magnitude_scores,
    mask_density,
    prunable_names,
    prune_kept,
    snip_scores,
    synflow_mask,
    synflow_scores,
    topk_mask,
    unit_bins,
)

INPUT_SHAPE = (3, 8, 8)


class ConvNet(nn.Module):
    """Tiny Conv+BN+Linear net mixing biased and bias-free layers."""

    def __init__(self, bias: bool = True, bn_kwargs: dict | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=bias),
            nn.BatchNorm2d(4, **(bn_kwargs or {})),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(24, 10, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mlp(widths: list[int], bias: bool = True) -> nn.Sequential:
    """Plain ReLU MLP with the given layer widths."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b, bias=bias))
    return nn.Sequential(*layers)


def total(masks: dict[str, torch.Tensor]) -> int:
    return sum(m.numel() for m in masks.values())


def kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_prunable_names_lists_conv_and_linear_weights_in_order():
    assert prunable_names(ConvNet()) == [
        "features.0.weight",
        "features.3.weight",
        "head.1.weight",
    ]
    assert prunable_names(nn.Linear(3, 2)) == ["weight"]
    mixed = nn.Sequential(nn.Conv1d(2, 2, 1), nn.LayerNorm(2), nn.Conv3d(2, 2, 1))
    assert prunable_names(mixed) == ["0.weight", "2.weight"]


@pytest.mark.parametrize("bias", [True, False])
def test_scores_keyed_by_prunable_names(bias):
    model = ConvNet(bias=bias)
    batch = (torch.randn(4, *INPUT_SHAPE), torch.randint(0, 10, (4,)))
    params = dict(model.named_parameters())
    for scores in (
        magnitude_scores(model),
        snip_scores(model, [batch]),
        synflow_scores(model, INPUT_SHAPE),
    ):
        assert list(scores) == prunable_names(model)
        for name, s in scores.items():
            assert s.shape == params[name].shape


def test_magnitude_scores_are_abs_weights():
    model = ConvNet()
    for name, s in magnitude_scores(model).items():
        assert torch.equal(s, dict(model.named_parameters())[name].detach().abs())


def _random_scores() -> dict[str, torch.Tensor]:
    return {"a": torch.randn(7, 3), "b": torch.randn(11), "c": torch.randn(2, 2, 5)}


def _equal_scores() -> dict[str, torch.Tensor]:
    return {"a": torch.ones(7, 3), "b": torch.ones(11), "c": torch.ones(2, 2, 5)}


def _few_values_scores() -> dict[str, torch.Tensor]:
    return {k: torch.randint(0, 3, v.shape).float() for k, v in _random_scores().items()}


SCORE_MAKERS = [_random_scores, _equal_scores, _few_values_scores]
DENSITIES = [0.01, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("make", SCORE_MAKERS)
@pytest.mark.parametrize("density", DENSITIES)
def test_topk_mask_global_keeps_exact_count(make, density):
    scores = make()
    masks = topk_mask(scores, density)
    assert set(masks) == set(scores)
    for name, m in masks.items():
        assert m.dtype == torch.bool and m.shape == scores[name].shape
    assert kept(masks) == round(density * total(scores))


@pytest.mark.parametrize("make", SCORE_MAKERS)
@pytest.mark.parametrize("density", DENSITIES)
def test_topk_mask_layer_keeps_exact_count_per_layer(make, density):
    scores = make()
    masks = topk_mask(scores, density, scope="layer")
    for name, m in masks.items():
        assert int(m.sum()) == round(density * scores[name].numel())


def test_topk_mask_keeps_highest_scores():
    scores = _random_scores()
    masks = topk_mask(scores, 0.3)
    kept_vals = torch.cat([s[masks[k]] for k, s in scores.items()])
    dropped_vals = torch.cat([s[~masks[k]] for k, s in scores.items()])
    assert kept_vals.min() > dropped_vals.max()


def test_topk_mask_is_deterministic_with_ties():
    first = topk_mask(_equal_scores(), 0.4)
    second = topk_mask(_equal_scores(), 0.4)
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("density", [0.0, -0.2, 1.5, float("nan")])
def test_topk_mask_rejects_bad_density(density):
    with pytest.raises(ValueError, match="density"):
        topk_mask(_random_scores(), density)


def test_topk_mask_rejects_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        topk_mask(_random_scores(), 0.5, scope="module")


def test_mask_density():
    masks = {"a": torch.tensor([True, False, True, True]), "b": torch.zeros(4, dtype=torch.bool)}
    assert mask_density(masks) == pytest.approx(3 / 8)


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_synflow_mask_exact_count(density, scope):
    model = ConvNet()
    masks = synflow_mask(model, density, INPUT_SHAPE, iterations=10, scope=scope)
    assert list(masks) == prunable_names(model)
    if scope == "global":
        assert kept(masks) == round(density * total(masks))
    else:
        for m in masks.values():
            assert int(m.sum()) == round(density * m.numel())


def test_synflow_mask_is_deterministic_and_leaves_model_untouched():
    model = ConvNet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = synflow_mask(model, 0.2, INPUT_SHAPE, iterations=10)
    second = synflow_mask(model, 0.2, INPUT_SHAPE, iterations=10)
    assert all(torch.equal(first[k], second[k]) for k in first)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert v.dtype == after[k].dtype
        assert torch.equal(v, after[k]), k
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_synflow_mask_differs_from_magnitude():
    model = mlp([20, 50, 50, 10])
    density = 0.2
    syn = synflow_mask(model, density, (20,), iterations=20)
    mag = topk_mask(magnitude_scores(model), density)
    assert kept(syn) == kept(mag)
    assert any(not torch.equal(syn[k], mag[k]) for k in syn)


def test_synflow_mask_avoids_layer_collapse():
    model = mlp([100, 100, 100, 10])
    with torch.no_grad():
        model[2].weight.mul_(0.01)  # tiny middle layer: magnitude would prune it all
    masks = synflow_mask(model, 0.1, (100,), iterations=100)
    for name, m in masks.items():
        assert m.any(), f"layer {name} fully pruned"


def test_synflow_mask_keeps_pruned_positions_pruned():
    model = mlp([10, 20, 5])
    masks = synflow_mask(model, 0.3, (10,), iterations=1)
    scores = synflow_scores(model, (10,), masks)
    for name, s in scores.items():
        assert torch.all(s[~masks[name]] == 0)


def test_synflow_scores_float64_and_finite_in_deep_narrow_net():
    model = mlp([4] * 13, bias=False)  # 12 Linear layers
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1000.0)
    # Sanity: the SynFlow objective overflows when computed in float32.
    assert not torch.isfinite(model(torch.ones(1, 4)).sum())
    scores = synflow_scores(model, (4,))
    assert len(scores) == 12
    for s in scores.values():
        assert s.dtype == torch.float64
        assert torch.isfinite(s).all() and (s > 0).all()
    assert next(model.parameters()).dtype == torch.float32


def test_synflow_scores_are_data_free_and_ignore_sign():
    model = mlp([6, 8, 3])
    flipped = mlp([6, 8, 3])
    flipped.load_state_dict({k: -v for k, v in model.state_dict().items()})
    a, b = synflow_scores(model, (6,)), synflow_scores(flipped, (6,))
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_synflow_scores_handle_batch_stat_norm_layers():
    bn = {"affine": False, "track_running_stats": False}
    model = ConvNet(bn_kwargs=bn)
    scores = synflow_scores(model, INPUT_SHAPE)
    assert all(torch.isfinite(s).all() and (s > 0).all() for s in scores.values())
    masks = synflow_mask(model, 0.3, INPUT_SHAPE, iterations=5)
    assert kept(masks) == round(0.3 * total(masks))
    assert isinstance(model.features[1], nn.BatchNorm2d)


def test_snip_scores_match_autograd():
    model = ConvNet()
    model.train()
    x, y = torch.randn(5, *INPUT_SHAPE), torch.randint(0, 10, (5,))
    scores = snip_scores(model, [(x, y)])
    assert model.training
    assert all(p.grad is None for p in model.parameters())

    model.eval()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    params = dict(model.named_parameters())
    assert list(scores) == prunable_names(model)
    for name, s in scores.items():
        expected = (params[name].grad * params[name]).abs().detach()
        torch.testing.assert_close(s, expected)


def test_snip_scores_sum_over_batches():
    model = ConvNet()
    batch = (torch.randn(3, *INPUT_SHAPE), torch.randint(0, 10, (3,)))
    once, twice = snip_scores(model, [batch]), snip_scores(model, [batch, batch])
    for name in once:
        torch.testing.assert_close(twice[name], 2 * once[name])


def test_snip_scores_restore_mixed_training_flags():
    model = ConvNet()
    model.train()
    model.features[1].eval()
    snip_scores(model, [(torch.randn(2, *INPUT_SHAPE), torch.randint(0, 10, (2,)))])
    assert model.training and model.head.training
    assert not model.features[1].training


# --- MPFL helpers: flat masks on dense models ---------------------------------------

def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(),
                         nn.Linear(8, 3, bias=False))


def test_apply_flat_mask_zeroes_exactly_the_pruned_weights():
    model = _tiny()
    before = flat_weights(model)
    mask = np.arange(before.size) % 3 == 0
    apply_flat_mask(model, mask)
    after = flat_weights(model)
    np.testing.assert_array_equal(after[mask], before[mask])
    assert np.all(after[~mask] == 0.0)


def test_unit_bins_number_output_units_across_layers_and_rank_magnitudes():
    model = _tiny()  # conv 2x1x3x3 (18 weights), linear 3x8 (24)
    units, bins = unit_bins(model, bins=4)
    assert np.array_equal(units, np.r_[np.repeat([0, 1], 9), np.repeat([2, 3, 4], 8)])
    magnitude = np.abs(flat_weights(model))
    for layer in (slice(0, 18), slice(18, 42)):
        order = np.argsort(magnitude[layer], kind="stable")
        assert np.all(np.diff(bins[layer][order].astype(int)) >= 0)  # bins follow |w|
        assert set(np.bincount(bins[layer], minlength=4)) <= {4, 5, 6}  # quantiles


def test_prune_kept_drops_the_smallest_kept_magnitudes():
    model = _tiny()
    w = np.abs(flat_weights(model))
    mask = np.ones(w.size, bool)
    mask[:4] = False
    new = prune_kept(model, mask, 0.25)
    assert new.sum() == round(0.75 * mask.sum()) and not new[~mask].any()
    assert w[new].min() >= w[mask & ~new].max()


def test_prune_kept_by_filter_removes_whole_filters_first():
    model = _tiny()
    with torch.no_grad():
        model[0].weight[0].fill_(0.01)   # filter 0 has the smaller L2 norm
        model[0].weight[1].fill_(1.0)
        model[2].weight.fill_(0.5)
    mask = np.ones(18 + 24, bool)
    new = prune_kept(model, mask, 9 / 42, "filter")  # exactly one 9-entry filter goes
    assert not new[:9].any() and new[9:].all()


def test_prune_kept_rejects_bad_options():
    with pytest.raises(ValueError, match="prune-structure"):
        prune_kept(_tiny(), np.ones(42, bool), 0.2, "channel")
    with pytest.raises(ValueError, match="prune-rate"):
        prune_kept(_tiny(), np.ones(42, bool), 1.0)


def test_keep_largest_stays_inside_the_mask():
    scores = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 0.0])
    mask = np.array([1, 1, 1, 1, 0, 1], bool)  # 9.0 is outside: never kept
    np.testing.assert_array_equal(keep_largest(scores, mask, 2), [1, 0, 1, 0, 0, 0])  # tie: earlier
    np.testing.assert_array_equal(keep_largest(scores, mask, 10), mask)  # at most all of mask
    assert not keep_largest(scores, mask, 0).any()
