"""fedmask: communication-efficient federated learning with masks and pruning, on Flower.

The public API: :mod:`fedmask.client` (the client side of every method around a
project's own training loop, and :func:`fedmask.client.app.client_app`), the
strategies of the top-level ``strategies`` package (``strategies.make(name, ...)``),
and the method registry :mod:`fedmask.methods`. Importing ``fedmask`` imports
nothing else, so a ClientApp process pays only for what it uses.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """``fedmask.load_model``, imported on first use (PEP 562)."""
    if name == "load_model":
        from fedmask.nn.model_file import load_model
        return load_model
    raise AttributeError(f"module 'fedmask' has no attribute {name!r}")
