import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from fedmask.nn.supermask import (
    BernoulliSTE,
    BernoulliSupermask,
    ScoreParameter,
    SignSTE,
    SignSupermask,
    attach,
    fixed_samples,
    frozen_weight,
    lr_ratio,
    supermasks,
)

WEIGHTS = ["0.weight", "3.weight"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, kernel_size=3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )


def inputs() -> torch.Tensor:
    return torch.randn(4, 1, 6, 6, requires_grad=True)


def output_and_input_grad(model: nn.Module, x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    out.pow(2).sum().backward()
    return out.detach(), x.grad


def random_sign_mask(name: str, weight: torch.Tensor) -> SignSupermask:
    prune = torch.rand_like(weight) < 0.6
    sign = torch.where(torch.rand_like(weight) < 0.5, 1.0, -1.0)
    return SignSupermask(weight, prune, sign)


def half_bernoulli(name: str, weight: torch.Tensor) -> BernoulliSupermask:
    return BernoulliSupermask(torch.full_like(weight, 0.5))


# --- STE functions -----------------------------------------------------------


def test_sign_ste_forward_and_identity_backward():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0], requires_grad=True)
    y = SignSTE.apply(x)
    assert y.tolist() == [-1.0, 1.0, 1.0, 1.0]
    upstream = torch.tensor([0.1, 0.2, 0.3, 0.4])
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)


def test_bernoulli_ste_identity_backward():
    p = torch.tensor([0.0, 1.0, 0.3], requires_grad=True)
    m = BernoulliSTE.apply(p)
    assert m[:2].tolist() == [0.0, 1.0]
    upstream = torch.tensor([1.0, 2.0, 3.0])
    m.backward(upstream)
    assert torch.equal(p.grad, upstream)


# --- identity masks leave the network unchanged -------------------------------


def test_identity_sign_mask_preserves_output_and_input_grad():
    plain = tiny_net()
    masked = copy.deepcopy(plain)
    attach(masked, lambda n, w: SignSupermask(w, torch.ones_like(w, dtype=torch.bool)), WEIGHTS)
    x = inputs()
    out_plain, grad_plain = output_and_input_grad(plain, x)
    out_masked, grad_masked = output_and_input_grad(masked, x)
    assert torch.allclose(out_masked, out_plain)
    assert torch.allclose(grad_masked, grad_plain)
    assert grad_plain.abs().sum() > 0


def test_all_ones_bernoulli_threshold_preserves_output():
    plain = tiny_net()
    masked = copy.deepcopy(plain)
    attach(masked, lambda n, w: BernoulliSupermask(torch.ones_like(w)), WEIGHTS)
    masked.eval()
    x = inputs()
    out_plain, grad_plain = output_and_input_grad(plain, x)
    out_masked, grad_masked = output_and_input_grad(masked, x)
    assert torch.allclose(out_masked, out_plain)
    assert torch.allclose(grad_masked, grad_plain)


def test_near_one_theta_samples_all_ones_in_training():
    mask = BernoulliSupermask(torch.full((100, 100), 1 - 1e-6))
    assert mask.training
    assert torch.equal(mask(torch.ones(100, 100)), torch.ones(100, 100))


def test_threshold_eval_is_deterministic():
    theta = torch.tensor([0.2, 0.49, 0.51, 0.9])
    mask = BernoulliSupermask(theta).eval()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert mask(w).tolist() == [0.0, 0.0, 3.0, 4.0]
    assert torch.equal(mask(w), mask(w))


# --- gradients through the STEs ----------------------------------------------


def linear_grads(lin: nn.Linear):
    """Backward through `lin` once; return (dL/dw_eff, frozen w, scores.grad)."""
    x = torch.randn(6, lin.in_features)
    with parametrize.cached():
        w_eff = lin.weight
        w_eff.retain_grad()
        lin(x).pow(2).sum().backward()
    return w_eff.grad, frozen_weight(lin, "weight"), supermasks(lin)["weight"].scores.grad


def unit_rms(grad: torch.Tensor, count: int) -> torch.Tensor:
    """`grad` rescaled to unit RMS over `count` positions (UnitRMSGrad)."""
    return grad / grad.square().sum().div(count).sqrt()


def test_sign_scores_grad_is_grad_times_weight_times_prune_mask_at_unit_rms():
    lin = nn.Linear(5, 4)
    attach(lin, random_sign_mask, ["weight"])
    prune = supermasks(lin)["weight"].prune_mask
    grad_eff, w, grad_scores = linear_grads(lin)
    expected = unit_rms(grad_eff * w * prune, int(prune.sum()))
    torch.testing.assert_close(grad_scores, expected)
    assert grad_scores.square().sum().div(prune.sum()).sqrt().item() == pytest.approx(1.0)
    assert (grad_scores != 0).sum() == (prune != 0).sum()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_steps_sign_scores_by_their_running_rms_per_position(momentum):
    mask = SignSupermask(torch.ones(4), torch.ones(4, dtype=torch.bool))
    opt = torch.optim.SGD([mask.scores], lr=1.0, momentum=momentum)
    g1, g2 = torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([3.0, 1.0, -0.5, 0.0])
    start = mask.scores.detach().clone()
    mask.scores.grad = g1.clone()
    opt.step()  # one gradient: its own RMS, so the sign
    torch.testing.assert_close(start - mask.scores.detach(), torch.sign(g1))
    mask.scores.grad = g2.clone()
    opt.step()
    beta = 0.999  # Adam's second moment, bias-corrected
    mean_square = ((1 - beta) * beta * g1**2 + (1 - beta) * g2**2) / (1 - beta**2)
    n1, n2 = torch.sign(g1), (g2 / mean_square.sqrt()).nan_to_num(0.0)
    mean = (momentum * n1 + n2) / (1 + momentum)  # Adam's bias-corrected first moment
    torch.testing.assert_close(start - mask.scores.detach(), n1 + mean)


@pytest.mark.parametrize(("momentum", "dampening"), [(0.9, 0.0), (0.9, 0.5), (0.5, 0.0)])
def test_sgd_momentum_on_scores_steps_by_the_bias_corrected_mean_gradient(momentum, dampening):
    mask = BernoulliSupermask(torch.full((3,), 0.5))  # no per-position step: grads as given
    opt = torch.optim.SGD([mask.scores], lr=0.1, momentum=momentum, dampening=dampening)
    grads = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    ema = torch.zeros(3)
    for t, grad in enumerate(grads, start=1):
        before = mask.scores.detach().clone()
        mask.scores.grad = grad.clone()
        opt.step()
        ema = momentum * ema + (1 - momentum) * grad
        torch.testing.assert_close(before - mask.scores.detach(), 0.1 * ema / (1 - momentum**t))


def test_bernoulli_scores_are_not_normalised_per_position():
    mask = BernoulliSupermask(torch.full((3,), 0.5))
    opt = torch.optim.SGD([mask.scores], lr=1.0)
    grad = torch.tensor([1.0, -2.0, 0.5])
    mask.scores.grad = grad.clone()
    opt.step()
    torch.testing.assert_close(mask.scores.grad, grad)


@pytest.mark.parametrize("estimator", ["ste", "theta"])
def test_bernoulli_scores_grad(estimator):
    lin = nn.Linear(5, 4)
    theta = torch.rand(4, 5) * 0.8 + 0.1
    attach(lin, lambda n, w: BernoulliSupermask(theta, estimator=estimator), ["weight"])
    grad_eff, w, grad_scores = linear_grads(lin)
    grad_m = grad_eff * w
    t = supermasks(lin)["weight"].theta().detach()
    expected = grad_m * t * t * (1 - t) if estimator == "theta" else grad_m * t * (1 - t)
    torch.testing.assert_close(grad_scores, unit_rms(expected, expected.numel()))
    assert (grad_scores != 0).all()


def test_bad_estimator_raises():
    with pytest.raises(ValueError, match="estimator") as info:
        BernoulliSupermask(torch.full((2,), 0.5), estimator="reinforce")
    assert "'ste'" in str(info.value) and "'theta'" in str(info.value)


def test_bad_eval_mode_raises():
    with pytest.raises(ValueError, match="eval_mode"):
        BernoulliSupermask(torch.full((2,), 0.5), eval_mode="mean")


# --- training moves scores only ------------------------------------------------


@pytest.mark.parametrize("make", [random_sign_mask, half_bernoulli])
def test_frozen_weights_never_move(make):
    model = tiny_net()
    attach(model, make, WEIGHTS)
    before = {name: frozen_weight(model, name).clone() for name in WEIGHTS}
    scores_before = {n: m.scores.detach().clone() for n, m in supermasks(model).items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(inputs()).pow(2).sum().backward()
        opt.step()
    for name in WEIGHTS:
        assert not frozen_weight(model, name).requires_grad
        assert torch.equal(frozen_weight(model, name), before[name])
        assert not torch.equal(supermasks(model)[name].scores, scores_before[name])


def test_pruned_positions_are_zero_and_get_no_gradient():
    model = tiny_net()
    attach(model, random_sign_mask, WEIGHTS)
    model(inputs()).pow(2).sum().backward()
    for name, mask in supermasks(model).items():
        pruned = mask.prune_mask == 0
        assert pruned.any() and (~pruned).any()
        effective = model.get_submodule(name.rpartition(".")[0]).weight
        assert torch.equal(effective[pruned], torch.zeros(int(pruned.sum())))
        assert torch.equal(mask.scores.grad[pruned], torch.zeros(int(pruned.sum())))
        assert (mask.scores.grad[~pruned] != 0).any()


# --- sign masks ----------------------------------------------------------------


def test_sign_mask_starts_from_given_signs():
    w = torch.tensor([[0.5, -1.0], [2.0, -3.0]])
    prune = torch.tensor([[True, False], [True, True]])
    sign = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    mask = SignSupermask(w, prune, sign)
    assert mask.signs().tolist() == [[False, True], [True, False]]
    assert mask(w).tolist() == [[-0.5, 0.0], [2.0, 3.0]]
    assert torch.equal(mask.scores.detach(), w.abs() * sign)
    assert mask.prune_mask.dtype == torch.float32


def test_sign_mask_default_signs_are_positive():
    w = torch.randn(3, 3)
    mask = SignSupermask(w, torch.ones(3, 3, dtype=torch.bool))
    assert mask.signs().all()
    assert torch.equal(mask(w), w)


def test_sign_mask_rejects_bad_prune_mask():
    w = torch.randn(2, 2)
    with pytest.raises(ValueError, match="prune_mask"):
        SignSupermask(w, torch.ones(2, 2))
    with pytest.raises(ValueError, match="prune_mask"):
        SignSupermask(w, torch.ones(4, dtype=torch.bool))


# --- Bernoulli sampling --------------------------------------------------------


def test_bernoulli_training_resamples_each_forward():
    mask = BernoulliSupermask(torch.full((50, 50), 0.5))
    ones = torch.ones(50, 50)
    first, second = mask(ones), mask(ones)
    assert not torch.equal(first, second)
    assert set(first.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_bernoulli_mean_near_theta(p):
    mask = BernoulliSupermask(torch.full((200, 200), p))
    assert abs(mask(torch.ones(200, 200)).mean().item() - p) < 0.01
    sample = mask.sample()
    assert sample.dtype == torch.bool and not sample.requires_grad
    assert abs(sample.float().mean().item() - p) < 0.01


def test_bernoulli_eval_sample_mode_resamples():
    mask = BernoulliSupermask(torch.full((50, 50), 0.5), eval_mode="sample").eval()
    ones = torch.ones(50, 50)
    assert not torch.equal(mask(ones), mask(ones))


def test_theta_is_sigmoid_of_scores_and_clamped():
    mask = BernoulliSupermask(torch.tensor([0.0, 0.25, 1.0]))
    assert torch.allclose(mask.theta(), torch.tensor([1e-6, 0.25, 1 - 1e-6]), atol=1e-7)


# --- attach / supermasks / frozen_weight ------------------------------------------


def test_supermasks_keys_are_original_names():
    model = tiny_net()
    originals = {name: model.get_parameter(name).detach().clone() for name in WEIGHTS}
    attach(model, random_sign_mask, WEIGHTS)
    found = supermasks(model)
    assert list(found) == WEIGHTS
    assert all(isinstance(m, SignSupermask) for m in found.values())
    for name in WEIGHTS:
        assert torch.equal(frozen_weight(model, name), originals[name])
    assert model[3].bias.requires_grad


def test_supermasks_empty_without_attach():
    assert supermasks(tiny_net()) == {}


@pytest.mark.parametrize("name", ["1.weight", "9.weight", "0.missing", "0.weight.x"])
def test_attach_unknown_name_raises_keyerror(name):
    model = tiny_net()
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        attach(model, random_sign_mask, [name])
    assert supermasks(model) == {}


def test_attach_twice_raises_keyerror():
    model = tiny_net()
    attach(model, random_sign_mask, ["0.weight"])
    with pytest.raises(KeyError, match="0.weight"):
        attach(model, random_sign_mask, ["0.weight"])


def test_frozen_weight_of_plain_parameter_raises():
    with pytest.raises(KeyError, match="not parametrised"):
        frozen_weight(tiny_net(), "0.weight")


def test_fixed_samples_scores_one_mask_per_pass():
    model = nn.Sequential(nn.Linear(50, 50, bias=False))
    attach(model, lambda name, w: BernoulliSupermask(torch.full_like(w, 0.5)), ["0.weight"])
    model.eval()
    with fixed_samples(model):
        first, second = model[0].weight, model[0].weight
        assert torch.equal(first, second)  # the same sample for every batch
        assert not torch.equal(first, frozen_weight(model, "0.weight"))
    thresholded = model[0].weight  # back to theta > 0.5 (all zero at exactly 0.5)
    assert torch.equal(thresholded, torch.zeros_like(thresholded))
    assert supermasks(model)["0.weight"].fixed is None


# --- scores scaled to the training loop's learning rate --------------------------


def test_lr_ratio_scales_the_parameter_not_the_mask():
    w = torch.randn(4, 6)
    prune = torch.rand(4, 6) > 0.3
    sign = torch.where(torch.rand(4, 6) > 0.5, 1.0, -1.0)
    plain, scaled = SignSupermask(w, prune, sign), SignSupermask(w, prune, sign, lr_ratio=0.1)
    torch.testing.assert_close(scaled.scores.detach(), plain.scores.detach() * 0.1)
    assert torch.equal(plain(w), scaled(w))
    theta = torch.rand(4, 6) * 0.8 + 0.1
    torch.testing.assert_close(BernoulliSupermask(theta, lr_ratio=0.01).theta(),
                               BernoulliSupermask(theta).theta())


def _one_step(mask: nn.Module, optimiser, lr: float, ratio: float) -> torch.Tensor:
    """One optimiser step on `mask`'s scores (a fixed loss), the new logits or scores
    divided by the mask's lr_ratio `ratio`."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=False)
    attach(lin, lambda n, w: mask, ["weight"])
    opt = optimiser([mask.scores], lr=lr)
    lin(torch.ones(2, 6)).pow(2).sum().backward()
    opt.step()
    return mask.scores.detach() / ratio


@pytest.mark.parametrize("optimiser", [torch.optim.SGD, torch.optim.Adam])
def test_a_step_moves_the_logits_alike_at_any_lr(optimiser):
    theta = torch.rand(3, 6) * 0.8 + 0.1
    slow = _one_step(BernoulliSupermask(theta, lr_ratio=0.05), optimiser, 0.01, 0.05)
    fast = _one_step(BernoulliSupermask(theta, lr_ratio=2.5), optimiser, 0.5, 2.5)
    torch.testing.assert_close(slow, fast)
    assert not torch.allclose(slow, torch.logit(theta))  # the step moved them


@pytest.mark.parametrize("optimiser", [torch.optim.SGD, torch.optim.Adam])
def test_a_step_moves_the_signs_scores_alike_at_any_lr(optimiser):
    w, prune = torch.randn(3, 6), torch.ones(3, 6, dtype=torch.bool)
    slow = _one_step(SignSupermask(w, prune, lr_ratio=1.0), optimiser, 0.01, 1.0)
    fast = _one_step(SignSupermask(w, prune, lr_ratio=50.0), optimiser, 0.5, 50.0)
    torch.testing.assert_close(slow, fast)
    assert not torch.allclose(slow, w.abs())  # the step moved them


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_lr_ratio_raises(bad):
    with pytest.raises(ValueError, match="lr_ratio"):
        SignSupermask(torch.ones(2), torch.ones(2, dtype=torch.bool), lr_ratio=bad)
    with pytest.raises(ValueError, match="lr_ratio"):
        BernoulliSupermask(torch.full((2,), 0.5), lr_ratio=bad)


def test_lr_ratio_needs_a_known_positive_lr():
    assert lr_ratio(0.1, 0.2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr: the message's config names no learning rate"):
        lr_ratio(None, 0.2)
    with pytest.raises(ValueError, match="lr: must be a positive number"):
        lr_ratio(-0.1, 0.2)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_moves_scores_by_about_lr_and_leaves_other_parameters_alone(nesterov):
    mask = SignSupermask(torch.ones(4), torch.ones(4, dtype=torch.bool))
    weight = nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([mask.scores, weight], lr=0.01, momentum=0.9, nesterov=nesterov)
    for step in range(200):  # a steady gradient of 1 per position
        mask.scores.grad, weight.grad = torch.ones(4), torch.ones(4)
        before = mask.scores.detach().clone(), weight.detach().clone()
        opt.step()
        if step == 0 and not nesterov:  # from the first step on
            torch.testing.assert_close(before[0] - mask.scores.detach(), torch.full((4,), 0.01))
    torch.testing.assert_close(before[0] - mask.scores.detach(), torch.full((4,), 0.01))
    torch.testing.assert_close(before[1] - weight.detach(), torch.full((4,), 0.1))  # lr / (1 - m)


def test_a_copied_supermask_keeps_its_scores_marked():
    mask = copy.deepcopy(BernoulliSupermask(torch.full((3,), 0.5)))
    assert isinstance(mask.scores, ScoreParameter) and mask.scores.requires_grad
