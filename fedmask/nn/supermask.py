"""Supermask reparametrisations of frozen weights, trained via straight-through estimators.

A supermask is attached to a parameter with ``torch.nn.utils.parametrize``: the
original weight is frozen and the effective weight is computed from it and a
trainable ``scores`` tensor on every access.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_pre_hook

_THETA_EPS = 1e-6
ESTIMATORS = ("ste", "theta")
_EVAL_MODES = ("threshold", "sample")


class UnitRMSGrad(torch.autograd.Function):
    """Identity; the gradient is rescaled to unit RMS over `count` positions (the
    trainable ones), so a plain SGD step moves the scores by about `lr` whatever
    the loss's scale, as an Adam step does."""

    @staticmethod
    def forward(ctx, x: Tensor, count: int) -> Tensor:
        ctx.count = max(count, 1)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        rms = grad.float().square().sum().div(ctx.count).sqrt()
        return grad / rms.clamp_min(torch.finfo(torch.float32).tiny).to(grad.dtype), None


class ScoreParameter(nn.Parameter):
    """A supermask's trainable scores (the type marks them for :func:`_sgd_on_scores`,
    and survives ``copy.deepcopy``)."""

    per_position = False  # whether SGD steps are normalised position by position


class SignScoreParameter(ScoreParameter):
    """A sign supermask's scores: SGD steps normalised position by position."""

    per_position = True


SQUARES = "fedmask-score-squares"  # optimizer.state[param]: (steps, running mean square)
SQUARES_DECAY = 0.999  # Adam's default second-moment decay


MOMENTUM_STEPS = "fedmask-momentum-steps"  # optimizer.state[param]: SGD steps since the buffer


def bias_corrected_momentum(grad: Tensor, group: dict, state: dict) -> None:
    """Scale `grad` and SGD's momentum buffer in `state` in place so that the step
    SGD is about to take is the bias-corrected running mean of the gradients (Adam's
    first moment): ``buf_t = EMA_t / (1 - m^t)``, ``EMA_t = m EMA_{t-1} + (1 - m)
    g_t``. A steady gradient then moves the scores by ``lr`` per step from the first
    step on, as without momentum and as Adam does (with Nesterov, by up to ``(1 +
    m) lr``). Torch's first step copies the gradient into the buffer, which is that
    mean already."""
    momentum, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
    buffer = state.get("momentum_buffer")
    if momentum <= 0 or buffer is None:
        state[MOMENTUM_STEPS] = 1
        return
    steps = state.get(MOMENTUM_STEPS, 1) + 1
    state[MOMENTUM_STEPS] = steps
    buffer.mul_((1 - momentum ** (steps - 1)) / (1 - momentum**steps))
    grad.mul_((1 - momentum) / (((1 - dampening) or 1.0) * (1 - momentum**steps)))


def per_position(grad: Tensor, state: dict) -> Tensor:
    """`grad` over the running RMS of the gradients so far at each position, `grad`
    included (Adam's second moment: decay 0.999, bias-corrected), kept in `state`."""
    steps, squares = state.get(SQUARES, (0, torch.zeros_like(grad)))
    steps += 1
    squares = squares.mul(SQUARES_DECAY).addcmul_(grad, grad, value=1 - SQUARES_DECAY)
    state[SQUARES] = (steps, squares)
    rms = (squares / (1 - SQUARES_DECAY**steps)).sqrt()
    return (grad / rms.clamp_min(torch.finfo(grad.dtype).tiny)).nan_to_num(0.0)


def _sgd_on_scores(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    """Global optimiser pre-step hook: before a ``torch.optim.SGD`` step, divide the
    gradient of sign scores position by position by its running RMS (SGD then steps
    them as RMSprop would; Adam and other adaptive optimisers do so themselves), and
    turn the momentum of all supermask scores into a bias-corrected mean
    (:func:`bias_corrected_momentum`), so a steady gradient moves them by about
    ``lr`` per step, as without momentum and as Adam does. Other parameters and
    other optimisers are left alone."""
    del args, kwargs
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not isinstance(param, ScoreParameter) or param.grad is None:
                continue
            state = optimizer.state[param]
            if param.per_position:
                param.grad.copy_(per_position(param.grad, state))
            bias_corrected_momentum(param.grad, group, state)


register_optimizer_step_pre_hook(_sgd_on_scores)


class SignSTE(torch.autograd.Function):
    """Sign with ``sign(0) = +1``; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class BernoulliSTE(torch.autograd.Function):
    """Bernoulli sample of probabilities `p`; the gradient passes through to `p` unchanged."""

    @staticmethod
    def forward(ctx, p: Tensor) -> Tensor:
        return torch.bernoulli(p)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _check_like(name: str, tensor: Tensor, weight: Tensor) -> None:
    """Raise ValueError unless `tensor` has the shape of `weight`."""
    if tensor.shape != weight.shape:
        expected, got = tuple(weight.shape), tuple(tensor.shape)
        raise ValueError(f"{name}: expected shape {expected}, got {got}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_ratio(lr_ratio: float) -> None:
    """Raise ValueError unless `lr_ratio` is a positive finite number."""
    if not math.isfinite(lr_ratio) or lr_ratio <= 0:
        raise ValueError(f"lr_ratio: must be a positive number, got {lr_ratio}")


def lr_ratio(lr: float | None, reference: float) -> float:
    """`lr` (the learning rate the user's loop trains with) over a method's
    `reference` rate, the ``lr_ratio`` of its supermasks; ValueError naming ``lr``
    when it is unknown or not a positive number."""
    if lr is None:
        raise ValueError("lr: the message's config names no learning rate; pass the one "
                         "your loop trains with: fedmask.client.train_module(..., lr=...)")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: must be a positive number, got {lr}")
    return lr / reference


class SignSupermask(nn.Module):
    """Parametrisation ``w -> w * prune_mask * sign(scores)``.

    Parameters
    ----------
    weight : torch.Tensor
        Frozen weight; ``|weight| * sign`` initialises the scores.
    prune_mask : torch.Tensor
        Boolean tensor shaped like `weight`; False positions are zeroed.
    sign : torch.Tensor, optional
        ±1 float tensor shaped like `weight` (default all +1): the initial signs.
    lr_ratio : float
        The training loop's learning rate over the method's reference rate: the
        parameter holds ``lr_ratio * |weight| * sign``, so that any optimiser moves
        the scores, relative to their size, as the reference one does.

    Notes
    -----
    Through `SignSTE`, ``dL/dscores`` is ``dL/dw_eff * w * prune_mask`` rescaled to
    unit RMS over the kept positions (:class:`UnitRMSGrad`); before an SGD step it is
    also divided position by position by its running RMS (:func:`_sgd_on_scores`:
    measured, sign masks then train under SGD about as well as under Adam; FedPM's
    Bernoulli masks measured the other way). Where ``weight == 0``
    the score is 0 and the sign reads as +1 whatever `sign` was.
    """

    def __init__(self, weight: Tensor, prune_mask: Tensor, sign: Tensor | None = None,
                 lr_ratio: float = 1.0):
        super().__init__()
        if prune_mask.dtype != torch.bool:
            raise ValueError(f"prune_mask: expected dtype torch.bool, got {prune_mask.dtype}")
        _check_like("prune_mask", prune_mask, weight)
        _check_ratio(lr_ratio)
        sign = torch.ones_like(weight) if sign is None else sign
        _check_like("sign", sign, weight)
        self.scores = SignScoreParameter(weight.detach().abs() * sign * lr_ratio)
        self.kept = int(prune_mask.sum())
        self.prune_mask: Tensor
        self.register_buffer("prune_mask", prune_mask.to(weight.dtype))

    def trainable_scores(self) -> Tensor:
        """The scores, their gradient rescaled by :class:`UnitRMSGrad`."""
        return cast(Tensor, UnitRMSGrad.apply(self.scores, self.kept))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.prune_mask * SignSTE.apply(self.trainable_scores())

    def signs(self) -> Tensor:
        """Boolean tensor, True where ``sign(scores)`` is +1, over all positions."""
        return self.scores.detach() >= 0


class BernoulliSupermask(nn.Module):
    """Parametrisation ``w -> w * m`` with ``m ~ Bernoulli(sigmoid(scores))``.

    A fresh mask is sampled on every forward pass in training mode. In eval
    mode `eval_mode` selects ``"threshold"`` (``m = theta > 0.5``) or
    ``"sample"`` (a fresh sample, as in training); inside
    :func:`fixed_samples` one sample drawn on entry is used instead.

    Parameters
    ----------
    theta : torch.Tensor
        Initial keep probabilities, clamped to ``[1e-6, 1 - 1e-6]``.
    estimator : {"ste", "theta"}
        Gradient w.r.t. the scores: ``"ste"`` gives ``dL/dm * sigmoid'(scores)``
        (straight-through the sample only); ``"theta"`` gives
        ``dL/dm * theta * sigmoid'(scores)`` (the authors' public code: the sample's
        gradient scaled by theta, then through the sigmoid).
    eval_mode : {"threshold", "sample"}
        Mask used when not training.
    lr_ratio : float
        The training loop's learning rate over the method's reference rate: the
        parameter holds ``lr_ratio * logit(theta)`` and the logits are the parameter
        over `lr_ratio`, so that any optimiser moves the logits as the reference
        one does. The gradient reaching the parameter is rescaled to unit RMS
        (:class:`UnitRMSGrad`).
    """

    def __init__(self, theta: Tensor, estimator: str = "ste", eval_mode: str = "threshold",
                 lr_ratio: float = 1.0):
        super().__init__()
        _check_choice("estimator", estimator, ESTIMATORS)
        _check_choice("eval_mode", eval_mode, _EVAL_MODES)
        _check_ratio(lr_ratio)
        self.estimator = estimator
        self.eval_mode = eval_mode
        self.lr_ratio = lr_ratio
        clamped = theta.detach().clamp(_THETA_EPS, 1 - _THETA_EPS)
        self.scores = ScoreParameter(torch.logit(clamped) * lr_ratio)
        self.fixed: Tensor | None = None

    def trainable_scores(self) -> Tensor:
        """The scores, their gradient rescaled by :class:`UnitRMSGrad`."""
        return cast(Tensor, UnitRMSGrad.apply(self.scores, self.scores.numel()))

    def theta(self) -> Tensor:
        """Keep probabilities ``sigmoid(scores / lr_ratio)``."""
        return torch.sigmoid(self.trainable_scores() / self.lr_ratio)

    def _probabilities(self) -> Tensor:
        """`theta` with the autograd path selected by `estimator`."""
        theta = self.theta()
        if self.estimator == "ste":
            return theta
        # Value theta, gradient theta * dtheta/ds (theta - theta.detach() is exactly 0).
        return theta.detach() * (1 + theta - theta.detach())

    def _mask(self) -> Tensor:
        """Mask for the current mode: a differentiable sample or the eval threshold."""
        if not self.training and self.fixed is not None:
            return self.fixed
        if self.training or self.eval_mode == "sample":
            return BernoulliSTE.apply(self._probabilities())
        return (self.theta() > 0.5).to(self.scores.dtype)

    def forward(self, w: Tensor) -> Tensor:
        return w * self._mask()

    @torch.no_grad()
    def sample(self) -> Tensor:
        """One Bernoulli sample of the mask, as a boolean tensor."""
        return torch.bernoulli(self.theta()).bool()


class FixedMask(nn.Module):
    """Parametrisation ``w -> w * mask`` of a trainable weight: pruned positions read
    as zero and get zero gradient, whatever loop or optimiser trains the weight.

    Parameters
    ----------
    weight : torch.Tensor
        The weight (its shape and dtype).
    mask : torch.Tensor
        Boolean tensor shaped like `weight`; False positions are pruned.
    """

    def __init__(self, weight: Tensor, mask: Tensor):
        super().__init__()
        _check_like("mask", mask, weight)
        self.mask: Tensor
        self.register_buffer("mask", mask.to(weight.dtype))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask


_SUPERMASKS = (SignSupermask, BernoulliSupermask)


@contextmanager
def fixed_samples(model: nn.Module) -> Iterator[None]:
    """Within the block, every BernoulliSupermask of `model` evaluates one mask
    sampled on entry (the same for every batch), so a pass scores one network."""
    masks = [m for m in supermasks(model).values() if isinstance(m, BernoulliSupermask)]
    for mask in masks:
        mask.fixed = mask.sample().to(mask.scores.dtype)
    try:
        yield
    finally:
        for mask in masks:
            mask.fixed = None


def _chains(module: nn.Module) -> nn.ModuleDict:
    """The parametrisation chains of a parametrised `module`, by tensor name."""
    return cast(nn.ModuleDict, module.parametrizations)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return the module holding parameter `name` and the attribute name within it."""
    module_name, _, attr = name.rpartition(".")
    try:
        return model.get_submodule(module_name), attr
    except AttributeError:
        raise KeyError(f"no module for parameter {name!r}") from None


def attach(
    model: nn.Module, make: Callable[[str, Tensor], nn.Module], names: Sequence[str],
    freeze: bool = True,
) -> None:
    """Parametrise each named parameter with ``make(name, param)``; freeze the
    original unless `freeze` is False.

    Parameters
    ----------
    model : nn.Module
        Model modified in place.
    make : Callable[[str, torch.Tensor], nn.Module]
        Builds the parametrisation for a parameter name and its current value.
    names : Sequence[str]
        Parameter names such as ``"features.0.weight"``.
    freeze : bool
        Stop gradients to the original tensors (supermasks train only their scores).

    Raises
    ------
    KeyError
        Naming any entry of `names` that is not a plain parameter of `model`.
    """
    params = dict(model.named_parameters())
    for name in names:
        if name not in params:
            raise KeyError(f"unknown parameter {name!r}")
        module, attr = _owner(model, name)
        parametrize.register_parametrization(module, attr, make(name, params[name]))
        _chains(module)[attr].original.requires_grad_(not freeze)


def fold(model: nn.Module) -> nn.Module:
    """`model` (in place) as a plain network: every parametrisation replaced by the
    tensor it computes in eval mode (FedPM: the thresholded mask), every parameter
    trainable, eval mode. A fresh instance of the same class loads its state dict."""
    model.eval()
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(_chains(module)):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model.requires_grad_(True)


def supermasks(model: nn.Module) -> dict[str, nn.Module]:
    """Map original parameter names to their supermask parametrisations.

    Returns
    -------
    dict[str, nn.Module]
        ``{"a.b.weight": SignSupermask | BernoulliSupermask}`` in ``named_modules`` order.
    """
    found: dict[str, nn.Module] = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, chain in module.parametrizations.items():
            name = f"{module_name}.{attr}" if module_name else attr
            found.update((name, p) for p in chain if isinstance(p, _SUPERMASKS))
    return found


def frozen_weight(model: nn.Module, name: str) -> Tensor:
    """The original (frozen) tensor behind parametrised parameter `name`.

    Raises
    ------
    KeyError
        If `name` is not a parametrised parameter of `model`.
    """
    module, attr = _owner(model, name)
    if not parametrize.is_parametrized(module, attr):
        raise KeyError(f"{name!r} is not parametrised")
    return cast(Tensor, _chains(module)[attr].original)
