"""Tests for fedmask.nn.training: optimisers, the training loop and evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmask.client.settings import LocalSettings
from fedmask.nn.training import (
    MIN_PRIOR,
    OPTIMIZERS,
    batches,
    evaluate,
    evaluate_metrics,
    log_prior,
    make_optimizer,
    train,
)


def _separable(n: int = 200, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x * 3.0, y)


def _loader(dataset: TensorDataset, batch_size: int = 20) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


def test_optimizers_tuple() -> None:
    assert OPTIMIZERS == ("sgd", "adam")


def test_make_optimizer_sgd() -> None:
    params = list(nn.Linear(2, 2).parameters())
    opt = make_optimizer(params, "sgd", 0.05, momentum=0.8)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["momentum"] == 0.8
    assert len(group["params"]) == 2
    assert make_optimizer(params, "sgd", 0.1).param_groups[0]["momentum"] == 0.9


def test_make_optimizer_adam() -> None:
    opt = make_optimizer(list(nn.Linear(2, 2).parameters()), "adam", 0.01)
    assert type(opt) is torch.optim.Adam
    assert opt.param_groups[0]["lr"] == 0.01


def test_make_optimizer_unknown() -> None:
    with pytest.raises(ValueError, match="optimizer") as info:
        make_optimizer(list(nn.Linear(2, 2).parameters()), "rmsprop", 0.1)
    assert "rmsprop" in str(info.value)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.1), ("adam", 0.05)])
def test_train_learns_separable_problem(optimizer: str, lr: float) -> None:
    model = _linear()
    train_loader = _loader(_separable(200, seed=0))
    test_loader = _loader(_separable(100, seed=1), batch_size=50)
    loss_before, acc_before = evaluate(model, test_loader)
    train_loss = train(model, train_loader, epochs=5, lr=lr, optimizer=optimizer)
    loss_after, acc_after = evaluate(model, test_loader)
    assert loss_after < loss_before
    assert loss_after < 0.3
    assert acc_after >= 0.95
    assert math.isfinite(train_loss) and train_loss > 0


def test_train_returns_mean_loss() -> None:
    """With lr=0 nothing changes, so the mean train loss equals evaluate()'s loss."""
    model = _linear()
    dataset = _separable(50)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train(model, _loader(dataset, batch_size=16), epochs=2, lr=0.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    expected = F.cross_entropy(model(dataset.tensors[0]), dataset.tensors[1]).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert evaluate(model, _loader(dataset))[0] == pytest.approx(expected, rel=1e-5)


def test_train_empty_loader_returns_zero() -> None:
    empty = TensorDataset(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    assert train(_linear(), _loader(empty), epochs=1, lr=0.1) == 0.0


def test_only_trainable_parameters_change() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, _loader(_separable(60)), epochs=2, lr=0.1)
    after = dict(model.named_parameters())
    assert torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["2.bias"], before["2.bias"])
    assert not torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])


def test_train_sets_train_mode_and_evaluate_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    model.eval()
    train(model, _loader(_separable(20)), epochs=1, lr=0.1)
    assert model.training
    evaluate(model, _loader(_separable(20)))
    assert not model.training


def test_evaluate_exact_values() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])  # last one is wrong
    loss, acc = evaluate(model, _loader(TensorDataset(x, y), batch_size=3))
    assert acc == 0.75
    expected = F.cross_entropy(x, y).item()
    assert loss == pytest.approx(expected, rel=1e-6)
    no_grad_ok = all(p.grad is None for p in model.parameters())
    assert no_grad_ok


def test_evaluate_predicts_from_the_logits_plus_the_shift() -> None:
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)  # every logit 0: the shift alone decides
    x, y = torch.randn(10, 2), torch.tensor([1] * 7 + [0] * 3)
    shift = log_prior(torch.tensor([1, 3]))
    loss, accuracy = evaluate(model, _loader(TensorDataset(x, y), 5), logit_shift=shift)
    assert accuracy == pytest.approx(0.7)
    assert loss == pytest.approx(F.cross_entropy(shift.expand(10, 2), y).item())
    assert evaluate(model, _loader(TensorDataset(x, y), 5))[1] == pytest.approx(0.3)  # ties: 0


def test_evaluate_empty_loader() -> None:
    empty = TensorDataset(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no examples"):
        evaluate(_linear(), _loader(empty))


def test_evaluate_metrics_adds_sampled_figures_only_when_asked() -> None:
    from fedmask.nn.supermask import BernoulliSupermask, attach

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    attach(model, lambda name, w: BernoulliSupermask(torch.full_like(w, 0.7)), ["0.weight"])
    loader = _loader(_separable())
    plain = evaluate_metrics(model, loader)
    assert set(plain) == {"loss", "accuracy"}
    assert plain["accuracy"] == evaluate(model, loader)[1]
    sampled = evaluate_metrics(model, loader, samples=4)
    assert set(sampled) == {"loss", "accuracy", "sampled-loss", "sampled-accuracy"}
    assert 0.0 <= sampled["sampled-accuracy"] <= 1.0 and sampled["sampled-loss"] > 0


@pytest.mark.parametrize("epochs, min_steps, expected", [(2, 0, 20), (2, 3, 20), (1, 25, 25),
                                                        (2, 25, 25), (0, 0, 0)])
def test_min_steps_continue_the_epochs_over_the_data_again(epochs, min_steps, expected) -> None:
    loader = _loader(_separable(200), batch_size=20)  # 10 batches an epoch
    assert len(list(batches(loader, epochs, min_steps))) == expected


def test_min_steps_of_an_empty_loader_end() -> None:
    assert list(batches(_loader(TensorDataset(torch.zeros(0, 2))), 1, 5)) == []


def test_train_with_min_steps_counts_batches() -> None:
    loader = _loader(_separable(200), batch_size=20)
    model = _linear()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    train(model, loader, epochs=1, lr=0.1, min_steps=13)
    assert seen == [20] * 13


def test_log_prior_is_the_label_distribution_with_absent_classes_at_min_prior() -> None:
    torch.testing.assert_close(log_prior(torch.tensor([3, 1, 0])),
                               torch.tensor([0.75, 0.25, MIN_PRIOR]).log())


def test_the_balanced_loss_is_cross_entropy_of_the_shifted_logits() -> None:
    data = _separable(20)
    shift = log_prior(torch.tensor([15, 5]))
    model, expected = _linear(), _linear()
    train(model, _loader(data), 1, lr=0.1, optimizer="sgd", momentum=0.0, logit_shift=shift)
    x, y = data.tensors
    F.cross_entropy(expected(x) + shift, y).backward()
    with torch.no_grad():
        for param in expected.parameters():
            param -= 0.1 * param.grad
    for got, want in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_the_balanced_loss_leaves_the_classes_a_client_lacks_alone() -> None:
    """Trained on classes 0 and 1 only, cross-entropy drives the other classes'
    biases down; the balanced loss hardly moves them."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    moved = {}
    for loss in ("cross-entropy", "balanced"):
        torch.manual_seed(0)
        model = nn.Linear(4, 5)
        before = model.bias.detach().clone()
        settings = LocalSettings(lr=0.5, optimizer="sgd", momentum=0.0, loss=loss)
        shift = settings.logit_shift(torch.bincount(y, minlength=5))
        settings.fit(model, loader, 3, logit_shift=shift)
        moved[loss] = (before - model.bias.detach())[2:]  # how far each absent class fell
    assert (moved["cross-entropy"] > 0.2).all()
    assert (moved["balanced"].abs() < 0.01).all()


def test_local_settings_name_a_bad_loss() -> None:
    assert LocalSettings().logit_shift(torch.tensor([1, 1])) is None  # cross-entropy
    with pytest.raises(ValueError, match="loss: 'focal' is not one of"):
        LocalSettings(loss="focal").logit_shift(torch.tensor([1, 1]))


def test_personal_settings_train_the_weights_by_sgd_at_the_personal_lr() -> None:
    settings = LocalSettings(lr=0.01, optimizer="adam", personal_lr=0.003)
    assert settings.tunes_weights  # the default
    assert (settings.personal().optimizer, settings.personal().lr) == ("sgd", 0.003)
    training_rule = LocalSettings(lr=0.01, optimizer="adam", personal_tuning="training")
    assert training_rule.personal() == training_rule  # the round's optimiser and lr
    with pytest.raises(ValueError, match="personal-tuning: 'head' is not one of"):
        LocalSettings(personal_tuning="head").personal()


def test_a_label_prior_shorter_than_the_logits_trains_the_missing_classes_as_absent() -> None:
    data = _separable(20)  # labels 0 and 1; the model has 3 outputs
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    train(model, _loader(data), 1, lr=0.1, optimizer="sgd", momentum=0.0,
          logit_shift=log_prior(torch.tensor([15, 5])))
    assert all(torch.isfinite(p).all() for p in model.parameters())
