"""MPFL wire contract (phase 2 is masked FedAvg: :mod:`fedmask.methods.masked.wire`).

Phase 1 (mask search). Down: the ``weights`` ArrayRecord holds ``mask`` (the
consensus C, N bits, packed) and, with ``init="model"`` (clients cannot rebuild
the model's own ``w0`` from the seed), the kept values of ``w0 * C``; the
config adds ``prune-rate``, ``prune-structure`` and ``mask-coding`` to the keys
of the masked contract.
Up: the client's vote ``C_k`` (a subset of C) as the ``client-mask`` record of
:func:`fedmask.methods.masked.wire.encode_client_mask`.
"""

PRUNE_RATE, PRUNE_STRUCTURE = "prune-rate", "prune-structure"
