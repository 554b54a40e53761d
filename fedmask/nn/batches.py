"""Batches as ``(inputs, targets)`` pairs, whatever the loader yields.

torchvision-style loaders yield ``(x, y)`` tuples; Hugging Face / flwr-datasets
loaders yield dicts such as ``{"img": x, "label": y}``. fedmask's own steps
that read data (SSFL's saliency) accept either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor

IMAGE_KEYS = ("img", "image", "pixel_values", "x")
LABEL_KEYS = ("label", "labels", "fine_label", "y")


def _pick(batch: Mapping[str, Any], key: str | None, candidates: Sequence[str],
          what: str) -> Tensor:
    """``batch[key]``, or the first of `candidates` the batch has."""
    for name in (key,) if key else candidates:
        if name in batch:
            return batch[name]
    raise KeyError(f"batch: no {what} key among {list(batch)}; expected one of "
                   f"{[key] if key else list(candidates)} (pass image_key/label_key)")


def as_pairs(batches: Iterable[Any], image_key: str | None = None,
             label_key: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, targets)`` from tuple or dict batches (keys: `image_key` /
    `label_key`, else the first of :data:`IMAGE_KEYS` / :data:`LABEL_KEYS` present)."""
    for batch in batches:
        if isinstance(batch, Mapping):
            yield (_pick(batch, image_key, IMAGE_KEYS, "image"),
                   _pick(batch, label_key, LABEL_KEYS, "label"))
        else:
            inputs, targets = batch[0], batch[1]
            yield inputs, targets
