"""Bit-packed boolean masks and validated (de)serialisation helpers.

Masks are flattened in C order and packed with ``np.packbits`` using
``bitorder="big"``: the first mask entry is the most significant bit of the
first byte, and unused bits of the last byte must be zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

_BITORDER: Literal["big"] = "big"


class CodecError(ValueError):
    """A payload failed validation; `field` names the offending record key/field.

    Parameters
    ----------
    field : str
        Name of the record key or field that failed validation.
    message : str
        Human-readable description of the problem.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _to_numpy(array: np.ndarray | Tensor) -> np.ndarray:
    """Return `array` as a numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _require_bool(array: np.ndarray, field: str) -> None:
    """Raise `CodecError` unless `array` has dtype bool."""
    if array.dtype != np.bool_:
        raise CodecError(field, f"expected dtype bool, got {array.dtype}")


def pack_mask(mask: np.ndarray | Tensor) -> np.ndarray:
    """Pack a boolean mask into bytes.

    Parameters
    ----------
    mask : np.ndarray or torch.Tensor
        Boolean mask of any shape; flattened in C order.

    Returns
    -------
    np.ndarray
        1-D ``uint8`` array of ``ceil(mask.size / 8)`` bytes.

    Raises
    ------
    CodecError
        If `mask` is not boolean (field ``"mask"``).
    """
    flat = _to_numpy(mask).reshape(-1)
    _require_bool(flat, "mask")
    return np.packbits(flat, bitorder=_BITORDER)


def _check_length(length: int, field: str) -> None:
    """Raise `CodecError` unless `length` is a non-negative integer."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise CodecError(field, f"length must be an int, got {type(length).__name__}")
    if length < 0:
        raise CodecError(field, f"length must be non-negative, got {length}")


def _check_packed(packed: np.ndarray, length: int, field: str) -> None:
    """Validate type, shape, dtype and byte count of a packed mask."""
    if not isinstance(packed, np.ndarray):
        raise CodecError(field, f"expected np.ndarray, got {type(packed).__name__}")
    if packed.ndim != 1:
        raise CodecError(field, f"expected a 1-D array, got ndim={packed.ndim}")
    if packed.dtype != np.uint8:
        raise CodecError(field, f"expected dtype uint8, got dtype {packed.dtype}")
    expected = math.ceil(length / 8)
    if packed.size != expected:
        raise CodecError(
            field, f"expected {expected} bytes for {length} bits, got {packed.size} bytes"
        )


def _check_padding(packed: np.ndarray, length: int, field: str) -> None:
    """Raise `CodecError` if any bit after `length` in the last byte is set."""
    spare = -length % 8
    if spare and packed[-1] & ((1 << spare) - 1):
        raise CodecError(field, "non-zero padding bits")


def unpack_mask(packed: np.ndarray, length: int, field: str = "mask") -> np.ndarray:
    """Unpack bytes produced by `pack_mask` after validating them.

    Parameters
    ----------
    packed : np.ndarray
        1-D ``uint8`` array of exactly ``ceil(length / 8)`` bytes.
    length : int
        Number of mask entries (non-negative).
    field : str, optional
        Name reported in any `CodecError`.

    Returns
    -------
    np.ndarray
        1-D boolean array of `length` entries.

    Raises
    ------
    CodecError
        If `packed` or `length` is malformed or padding bits are non-zero.
    """
    check_packed(packed, length, field)
    return np.unpackbits(packed, count=length, bitorder=_BITORDER).view(np.bool_)


def check_packed(packed: np.ndarray, length: int, field: str = "mask") -> np.ndarray:
    """`packed` once checked as :func:`unpack_mask` checks it (length, type, byte
    count, zero padding); raise CodecError naming `field`."""
    _check_length(length, field)
    _check_packed(packed, length, field)
    _check_padding(packed, length, field)
    return packed


def flatten_masks(masks: Mapping[str, Tensor], names: Sequence[str]) -> np.ndarray:
    """Concatenate the flattened masks ``masks[name]`` for `names`, in that order.

    Parameters
    ----------
    masks : Mapping[str, torch.Tensor]
        Boolean masks keyed by parameter name.
    names : Sequence[str]
        Names to include, in output order.

    Returns
    -------
    np.ndarray
        1-D boolean array.

    Raises
    ------
    CodecError
        Naming the parameter if it is missing or not boolean.
    """
    parts = []
    for name in names:
        if name not in masks:
            raise CodecError(name, "missing mask")
        part = _to_numpy(masks[name]).reshape(-1)
        _require_bool(part, name)
        parts.append(part)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.bool_)


def split_flat(flat: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Split a flat array into tensors of `shapes` (inverse of `flatten_masks`).

    Parameters
    ----------
    flat : np.ndarray
        1-D array whose length equals the total number of elements in `shapes`.
    shapes : Mapping[str, tuple[int, ...]]
        Target shapes; chunks are taken in the mapping's order.

    Returns
    -------
    dict[str, torch.Tensor]
        Tensors (copies, dtype of `flat`) keyed like `shapes`.

    Raises
    ------
    CodecError
        If the length of `flat` does not match (field ``"mask"``).
    """
    sizes = [math.prod(shape) for shape in shapes.values()]
    if flat.size != sum(sizes):
        raise CodecError("mask", f"expected {sum(sizes)} entries, got {flat.size}")
    chunks = np.split(flat.reshape(-1), np.cumsum(sizes)[:-1]) if sizes else []
    return {
        name: torch.from_numpy(chunk.reshape(shape).copy())
        for (name, shape), chunk in zip(shapes.items(), chunks)
    }


def select(flat_mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return the entries of `values` at positions where `flat_mask` is True.

    Raises
    ------
    CodecError
        If `flat_mask` is not boolean or the shapes differ (field ``"values"``).
    """
    _require_bool(flat_mask, "mask")
    if flat_mask.shape != values.shape:
        raise CodecError("values", f"expected shape {flat_mask.shape}, got {values.shape}")
    return values[flat_mask]


def scatter(flat_mask: np.ndarray, kept: np.ndarray, fill: float | np.generic) -> np.ndarray:
    """Write `kept` at the True positions of `flat_mask`, `fill` elsewhere.

    Parameters
    ----------
    flat_mask : np.ndarray
        1-D boolean mask.
    kept : np.ndarray
        Values for the kept positions; ``kept.size == flat_mask.sum()``.
    fill : scalar
        Value for the positions where `flat_mask` is False.

    Returns
    -------
    np.ndarray
        Array of ``len(flat_mask)`` entries, dtype ``np.result_type(kept, fill)``.

    Raises
    ------
    CodecError
        If the number of kept values is wrong (field ``"values"``).
    """
    _require_bool(flat_mask, "mask")
    expected = int(flat_mask.sum())
    if kept.size != expected:
        raise CodecError("values", f"expected {expected} kept values, got {kept.size}")
    out = np.full(flat_mask.shape, fill, dtype=np.result_type(kept, fill))
    out[flat_mask] = kept.reshape(-1)
    return out
