"""fedmask: communication-efficient federated learning with masks and pruning, on Flower.

The public API: :mod:`fedmask.client` (the client side of every method around a
project's own training loop, and :func:`fedmask.client.app.client_app`), the
strategies of the top-level ``strategies`` package (``strategies.make(name, ...)``),
and the method registry :mod:`fedmask.methods`. Importing ``fedmask`` imports
nothing else, so a ClientApp process pays only for what it uses.
"""
