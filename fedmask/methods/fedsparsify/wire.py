"""FedSparsify wire contract: masked FedAvg (:mod:`fedmask.methods.masked.wire`) whose
mask shrinks during training.

The config adds ``fedsparsify-variant``. Global variant: exactly the masked
contract; when the server prunes, the new mask's digest is in the config and
the mask (N bits, packed) goes to every node once. Local variant: the config
adds ``target-kept``; the client trains under the global mask, keeps its
``target-kept`` largest-magnitude weights among the global mask's, and sends
``weights`` (kept values under its own mask) plus the ``client-mask`` record.
"""

VARIANT, TARGET_KEPT = "fedsparsify-variant", "target-kept"
VARIANTS = ("global", "local")
