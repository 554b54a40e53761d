"""Sparse weights on the wire: only the values a known mask keeps, plus small dense tensors.

A model's state travels as one ArrayRecord: ``kept-values`` (float32, the
prunable weights of :func:`fedmask.nn.pruning.prunable_names` flattened in that
order, at the positions where the mask is True) and every other tensor of the
state dict (biases, norm parameters) dense under its own name. Both sides hold
the mask, so it never travels with the values. Decoding validates the count,
dtype, finiteness and shapes and raises :class:`~fedmask.wire.bits.CodecError`.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

from fedmask.wire.bits import CodecError, scatter, split_flat

KEPT_VALUES = "kept-values"


def flat_state(state: dict[str, Tensor], names: list[str]) -> np.ndarray:
    """The tensors `names` of `state`, flattened and concatenated in that order."""
    return np.concatenate([state[name].detach().cpu().numpy().reshape(-1) for name in names])


def replace_flat(state: dict[str, Tensor], flat: np.ndarray, names: list[str]
                 ) -> dict[str, Tensor]:
    """A copy of `state` whose tensors `names` are `flat` (in that order), split."""
    shapes = {name: tuple(state[name].shape) for name in names}
    return {**state, **split_flat(flat, shapes)}


def encode_sparse(state: dict[str, Tensor], mask: np.ndarray, names: list[str],
                  value_format: str = "float32") -> ArrayRecord:
    """The ArrayRecord of `state`: the kept prunable values (as `value_format`,
    ``"float32"`` or ``"float16"``) and the dense rest."""
    flat = flat_state(state, names)
    if flat.size != mask.size:
        raise CodecError(KEPT_VALUES, f"mask has {mask.size} positions, weights {flat.size}")
    record = ArrayRecord({KEPT_VALUES: Array(flat[mask].astype(np.dtype(value_format)))})
    for name, tensor in state.items():
        if name not in names:
            record[name] = Array(tensor.detach().cpu().numpy())
    return record


def _checked(value: np.ndarray, field: str, dtype: np.dtype, shape: tuple[int, ...]
             ) -> np.ndarray:
    """`value` if it has `dtype` and `shape` and, when floating, only finite entries."""
    if value.dtype != dtype:
        raise CodecError(field, f"expected {dtype}, got {value.dtype}")
    if value.shape != shape:
        raise CodecError(field, f"expected shape {shape}, got {value.shape}")
    if np.issubdtype(dtype, np.floating) and not np.isfinite(value).all():
        raise CodecError(field, "values must be finite")
    return value


def decode_sparse(record: ArrayRecord, mask: np.ndarray, reference: dict[str, Tensor],
                  names: list[str]) -> dict[str, Tensor]:
    """A full state dict shaped like `reference`: kept values scattered over zeros
    at the mask's positions, the other tensors read dense; raise CodecError."""
    if KEPT_VALUES not in record:
        raise CodecError(KEPT_VALUES, "missing")
    kept = _checked(record[KEPT_VALUES].numpy(), KEPT_VALUES, np.dtype(np.float32),
                    (int(mask.sum()),))
    shapes = {name: tuple(reference[name].shape) for name in names}
    state = split_flat(scatter(mask, kept, np.float32(0.0)), shapes)
    for name, tensor in reference.items():
        if name in names:
            continue
        if name not in record:
            raise CodecError(name, "missing dense tensor")
        expected = torch.empty(0, dtype=tensor.dtype).numpy().dtype
        value = _checked(record[name].numpy(), name, expected, tuple(tensor.shape))
        state[name] = torch.from_numpy(value.copy())
    return {name: state[name] for name in reference}
