"""Pruning scorers (magnitude, SNIP, SynFlow) and score thresholding.

Scores and masks are dicts keyed by parameter name, as given by
``model.named_parameters()`` (e.g. ``"features.0.weight"``). Only the weights
of convolution and linear modules are prunable (see :func:`prunable_names`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRUNABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
SCOPES = ("global", "layer")


def prunable_names(model: nn.Module) -> list[str]:
    """Return the names of prunable weights, in ``named_modules`` order.

    Prunable weights are the ``weight`` of every ``nn.Conv1d/2d/3d`` and
    ``nn.Linear`` module; biases and normalization layers are never pruned.
    """
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_MODULES)
    ]


def _prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Map each prunable weight name to its parameter."""
    params = dict(model.named_parameters())
    return {name: params[name] for name in prunable_names(model)}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, restoring every module's flag on exit."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def magnitude_scores(model: nn.Module) -> dict[str, Tensor]:
    """Score prunable weights by their magnitude ``|w|``."""
    return {name: w.detach().abs().clone() for name, w in _prunable_weights(model).items()}


def snip_scores(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> dict[str, Tensor]:
    """Score prunable weights by SNIP connection sensitivity ``|g * w|``.

    Parameters
    ----------
    model
        Network to score; scored in eval mode, its training flags are restored.
    batches
        ``(inputs, targets)`` pairs; ``g`` is the gradient of the loss summed
        over all of them.
    loss_fn
        Loss taking ``(outputs, targets)``.

    Notes
    -----
    Gradients are taken with ``torch.autograd.grad``, so the ``.grad``
    attributes of the model are left untouched.
    """
    weights = _prunable_weights(model)
    device = next(iter(weights.values())).device
    grads = {name: torch.zeros_like(w) for name, w in weights.items()}
    with _eval_mode(model):
        for inputs, targets in batches:
            loss = loss_fn(model(inputs.to(device)), targets.to(device))
            for name, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
                grads[name] += g
    return {name: (grads[name] * w.detach()).abs() for name, w in weights.items()}


def _strip_norms(module: nn.Module) -> None:
    """Replace every normalization layer inside ``module`` by ``nn.Identity``."""
    for name, child in module.named_children():
        if isinstance(child, NORM_MODULES):
            setattr(module, name, nn.Identity())
        else:
            _strip_norms(child)


def synflow_scores(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Score prunable weights by SynFlow synaptic saliency (data-free).

    Works in float64 on a deep copy of ``model`` (the caller's model is not
    modified): normalization layers (BatchNorm, GroupNorm, LayerNorm,
    InstanceNorm) are replaced by ``nn.Identity`` to remove their data
    dependence, every parameter and floating buffer is replaced by its
    absolute value, prunable weights are multiplied by ``masks``, and the copy
    is run in eval mode on an all-ones input of shape ``(1, *input_shape)``.

    Parameters
    ----------
    model
        Network to score.
    input_shape
        Shape of one input sample, without the batch dimension.
    masks
        Boolean masks for every prunable weight (``False`` = pruned);
        ``None`` keeps all weights.

    Returns
    -------
    dict[str, Tensor]
        ``|dR/dw * w|`` in float64, where ``R`` is the sum of the output.
    """
    net = copy.deepcopy(model).double().eval()
    _strip_norms(net)
    weights = _prunable_weights(net)
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
        if masks is not None:
            for name, w in weights.items():
                w.mul_(masks[name].to(w))
    for w in weights.values():
        w.requires_grad_(True)
    device = next(iter(weights.values())).device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    grads = torch.autograd.grad(net(ones).sum(), list(weights.values()))
    return {name: (g * w).detach().abs() for (name, w), g in zip(weights.items(), grads)}


def _check_density(density: float) -> None:
    """Raise ``ValueError`` unless ``0 < density <= 1``."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")


def _keep_top(values: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor.

    Ties are broken by position (earlier entries win), so exactly ``k`` are kept.
    """
    order = torch.sort(values, descending=True, stable=True).indices
    keep = torch.zeros_like(values, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def topk_mask(
    scores: dict[str, Tensor], density: float, scope: str = "global"
) -> dict[str, Tensor]:
    """Keep the highest-scoring positions.

    Parameters
    ----------
    scores
        Scores per parameter name.
    density
        Fraction kept, in ``(0, 1]``: ``round(density * N)`` positions over all
        ``N`` scores for ``scope="global"``, ``round(density * n_l)`` in each
        layer for ``scope="layer"``. Ties are broken by flattened position.
    scope
        ``"global"`` or ``"layer"``.

    Returns
    -------
    dict[str, Tensor]
        Boolean masks (``True`` = kept) shaped like the scores.
    """
    _check_density(density)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "layer":
        return {
            name: _keep_top(s.detach().flatten(), round(density * s.numel())).view_as(s)
            for name, s in scores.items()
        }
    flat = torch.cat([s.detach().flatten().double() for s in scores.values()])
    keep = _keep_top(flat, round(density * flat.numel()))
    sizes = [s.numel() for s in scores.values()]
    return {
        name: part.view_as(s)
        for (name, s), part in zip(scores.items(), keep.split(sizes))
    }


def synflow_mask(
    model: nn.Module,
    density: float,
    input_shape: tuple[int, ...],
    iterations: int = 100,
    scope: str = "global",
) -> dict[str, Tensor]:
    """Prune iteratively with SynFlow to the given density.

    At step ``t = 1..iterations`` the weights are re-scored under the current
    masks and the top ``density ** (t / iterations)`` fraction of the
    surviving weights is kept; pruned weights stay pruned.

    Parameters
    ----------
    model
        Network to prune; not modified.
    density
        Final fraction kept, in ``(0, 1]``.
    input_shape
        Shape of one input sample, without the batch dimension.
    iterations
        Number of pruning rounds, at least 1.
    scope
        ``"global"`` or ``"layer"``, as in :func:`topk_mask`.

    Returns
    -------
    dict[str, Tensor]
        Boolean masks (``True`` = kept) for every prunable weight.
    """
    _check_density(density)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    masks = {
        name: torch.ones_like(w, dtype=torch.bool)
        for name, w in _prunable_weights(model).items()
    }
    for t in range(1, iterations + 1):
        scores = synflow_scores(model, input_shape, masks)
        alive = {
            name: s.masked_fill(~masks[name], float("-inf")) for name, s in scores.items()
        }
        masks = topk_mask(alive, density ** (t / iterations), scope)
    return masks


def mask_density(masks: dict[str, Tensor]) -> float:
    """Return the fraction of kept positions over all masks."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("masks must contain at least one position")
    return sum(int(m.count_nonzero()) for m in masks.values()) / total


PRUNE_STRUCTURES = ("unstructured", "filter")


def flat_weights(model: nn.Module) -> np.ndarray:
    """The prunable weights of `model`, flattened in :func:`prunable_names` order."""
    params = dict(model.named_parameters())
    return np.concatenate([params[n].detach().cpu().numpy().reshape(-1)
                           for n in prunable_names(model)])


def unit_bins(model: nn.Module, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per prunable weight (in :func:`flat_weights` order): the index of its output
    unit (its row, the weight's first dimension, numbered on across layers) and
    the quantile bin (uint8, 0 .. `bins` - 1) of its ``|w|`` within its layer."""
    weights = dict(model.named_parameters())
    units, quantiles, first = [], [], 0
    for name in prunable_names(model):
        weight = weights[name].detach().cpu()
        rows = weight.shape[0]
        units.append(np.repeat(np.arange(first, first + rows, dtype=np.int32),
                               weight.numel() // rows))
        first += rows
        magnitude = weight.abs().numpy().reshape(-1)
        edges = np.quantile(magnitude, np.arange(1, bins) / bins)
        quantiles.append(np.searchsorted(edges, magnitude, side="right").astype(np.uint8))
    return np.concatenate(units), np.concatenate(quantiles)


@torch.no_grad()
def apply_flat_mask(model: nn.Module, mask: np.ndarray) -> None:
    """Zero, in place, every prunable weight where the flat `mask` is False."""
    params = dict(model.named_parameters())
    start = 0
    for name in prunable_names(model):
        weight = params[name]
        part = mask[start:start + weight.numel()].reshape(weight.shape)
        weight.mul_(torch.from_numpy(part).to(weight.dtype))
        start += weight.numel()


def _filter_norms(weight: Tensor) -> Tensor:
    """Each entry's score: the L2 norm of its output filter (row), broadcast."""
    norms = weight.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight)


@torch.no_grad()
def prune_kept(model: nn.Module, mask: np.ndarray, rate: float,
               structure: str = "unstructured") -> np.ndarray:
    """Prune a further fraction `rate` of the positions `mask` keeps, by magnitude.

    Keeps the ``round((1 - rate) * kept)`` kept positions of largest ``|w|``
    (``structure="unstructured"``) or of largest L2 norm of their output filter
    (``"filter"``: whole filters go first; the last one may be cut part-way).
    Ties go to the earlier position. Returns the new flat mask (a subset of `mask`).
    """
    if structure not in PRUNE_STRUCTURES:
        raise ValueError(f"prune-structure must be one of {PRUNE_STRUCTURES}, got {structure!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"prune-rate must be in [0, 1), got {rate!r}")
    params = dict(model.named_parameters())
    score = _filter_norms if structure == "filter" else torch.abs
    scores = np.concatenate([score(params[n]).cpu().numpy().reshape(-1)
                             for n in prunable_names(model)])
    return keep_largest(scores, mask, round((1.0 - rate) * int(mask.sum())))


def keep_largest(scores: np.ndarray, mask: np.ndarray, keep: int) -> np.ndarray:
    """The flat mask of the `keep` positions of `mask` with the largest `scores`
    (ties to the earlier position); a subset of `mask`, all of it if `keep` >= its size."""
    ranked = np.where(mask, scores.astype(np.float64), -np.inf)
    new = np.zeros_like(mask)
    new[np.argsort(-ranked, kind="stable")[:min(keep, int(mask.sum()))]] = True
    return new
