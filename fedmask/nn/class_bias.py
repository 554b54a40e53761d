"""The per-class logit offset on the model: its output layer, the statistics a
client sends, and the offset set into the layer's bias (``class-bias``; wire
contract: :mod:`fedmask.wire.class_bias`, server step:
:class:`fedmask.server.class_bias.ClassBias`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from torch import Tensor, nn

from fedmask.nn.batches import as_pairs
from fedmask.wire.class_bias import ClassStats, offset_of

NEEDS_BIAS = ("class-bias: 'federated' keeps a per-class offset in the output layer's bias, "
              "and {name} has none: give it one (e.g. nn.Linear(..., bias=True)) or set "
              "class-bias = 'none'")


@torch.no_grad()
def output_layer(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The name of the module whose output is `model`'s output (found by a forward
    pass on two zero examples of `input_shape`); ValueError naming ``class-bias``
    where there is none, or where it has no bias."""
    outputs: dict[str, Any] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            outputs[name] = out  # its last call's (a module may run twice, e.g. a pool)
        return hook

    hooks = [module.register_forward_hook(keep(name))
             for name, module in model.named_modules() if name]
    training = model.training
    try:
        result = model.eval()(torch.zeros(2, *input_shape))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    names = [name for name, out in outputs.items() if out is result]
    if not names:
        raise ValueError("class-bias: no layer's output is the model's output (a forward "
                         "that changes the logits after its last layer); set class-bias = "
                         "'none'")
    name = names[0]  # the innermost: it returns first (a container passes its tensor on)
    layer_bias(model, name)
    return name


def layer_bias(model: nn.Module, layer: str) -> Tensor:
    """The bias of `model`'s output `layer`; ValueError naming ``class-bias`` if none."""
    bias = getattr(model.get_submodule(layer), "bias", None)
    if not isinstance(bias, Tensor):
        raise ValueError(NEEDS_BIAS.format(name=layer))
    return bias


@torch.no_grad()
def set_output_bias(model: nn.Module, layer: str, bias: np.ndarray | None) -> nn.Module:
    """Set the bias of `model`'s output `layer` to `bias` (None: leave it); return `model`."""
    if bias is not None:
        target = layer_bias(model, layer)
        if target.numel() != bias.size:
            raise ValueError(f"class-bias: {layer} must have a bias of {bias.size} classes")
        target.copy_(torch.from_numpy(bias).reshape(target.shape))
    return model


def with_offset(msg: Message, model: nn.Module) -> nn.Module:
    """`model` (the global network of `msg`) with the message's offsets in its output
    layer's bias, where the message carries them."""
    found = offset_of(msg)
    return model if found is None else set_output_bias(model, *found)


@torch.no_grad()
def class_stats(model: nn.Module, batches: Iterable[Any], bias: np.ndarray | None,
                num_classes: int) -> ClassStats:
    """For each class present in `batches`: its examples and the mean softmax of
    ``model(x) + bias`` over them, in eval mode; the randomness of the global
    generator and of the loader's own is left as it was (training after this sees
    the batches it would have seen)."""
    device = next(model.parameters()).device
    offset = torch.zeros(num_classes) if bias is None else torch.from_numpy(bias)
    sums, counts = torch.zeros(num_classes, num_classes, dtype=torch.float64), \
        torch.zeros(num_classes, dtype=torch.float64)
    training, generator = model.training, getattr(batches, "generator", None)
    if not isinstance(generator, torch.Generator):
        generator = None
    state = None if generator is None else generator.get_state()
    with torch.random.fork_rng(devices=[]):
        model.eval()
        for inputs, targets in as_pairs(batches):
            probs = _probs(model(inputs.to(device)), offset, num_classes).double()
            labels = targets.reshape(-1).long().cpu()
            sums.index_add_(0, labels, probs)
            counts.index_add_(0, labels, torch.ones(labels.numel(), dtype=torch.float64))
    model.train(training)
    if generator is not None and state is not None:
        generator.set_state(state)
    held = counts > 0
    return ClassStats.of(torch.nonzero(held).flatten().numpy(), counts[held].long().numpy(),
                         (sums[held] / counts[held, None]).numpy())


def _probs(logits: Tensor, offset: Tensor, num_classes: int) -> Tensor:
    """Softmax of ``logits + offset`` on the CPU; ValueError where the model's output
    is not (batch, classes)."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"class-bias: the model's output must be (batch, {num_classes}) "
                         f"logits, got {tuple(logits.shape)}")
    return torch.softmax(logits.float().cpu() + offset, dim=1)
