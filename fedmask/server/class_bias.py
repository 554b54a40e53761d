"""Server side of the federated per-class logit offset (HideNseek's ``class-bias``).

Under the class-balanced loss a client that holds two classes trains only the
difference of their logits: no client pins a class's level against the classes
it lacks, and under label skew the global model's per-class levels drift
(docs/benchmarks/skew.md). The server learns one offset b per class instead,
outside the masks: each class's latest report (the mean softmax q_c of logits
+ b over a client's examples of class c, pooled by count over the round's
replies) stands until the class is reported again, and every round (from
round 2: the first voted model is the first one reported on) steps
``b -= lr * mean_c (q_c - e_c)`` over the classes reported so far: gradient
descent on the class-balanced cross-entropy in b.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmask.wire.class_bias import PROB_UNITS, ClassStats


class ClassBias:
    """The offsets b, each class's latest report, and the step (see the module
    docstring). `bias`, `reports` and `reported` are the state to checkpoint."""

    def __init__(self, num_classes: int, lr: float) -> None:
        self.lr = lr
        self.bias = np.zeros(num_classes, dtype=np.float32)
        self.reports = np.zeros((num_classes, num_classes))  # row c: q_c
        self.reported = np.zeros(num_classes, dtype=bool)

    @property
    def num_classes(self) -> int:
        """C, the classes the output layer scores."""
        return self.bias.size

    def update(self, stats: Sequence[ClassStats]) -> dict[str, float]:
        """Take the round's reports (each class's pooled by count), step b (a round
        without reports leaves it: nothing new to step on); metrics: the classes
        reported so far and the range of b."""
        pooled = np.zeros(self.reports.shape, dtype=np.int64)  # exact, in any order
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for one in stats:
            pooled[one.ids] += one.counts[:, None] * one.units
            counts[one.ids] += one.counts
        fresh = counts > 0
        self.reports[fresh] = pooled[fresh] / (counts[fresh, None] * float(PROB_UNITS))
        self.reported |= fresh
        if fresh.any():
            targets = np.eye(self.num_classes)[self.reported]
            gradient = (self.reports[self.reported] - targets).mean(axis=0)
            self.bias = (self.bias - self.lr * gradient).astype(np.float32)
        return {"class-bias-classes": int(self.reported.sum()),
                "class-bias-range": float(np.ptp(self.bias))}
