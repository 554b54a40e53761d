"""Server checkpoints: the whole server state after a round, written atomically.

One ``.npz`` file (read back with ``allow_pickle=False``) holds the round, the
strategy's state (:class:`Checkpointable`), the global arrays, the server's
random-number-generator states and a JSON document (config, results so far).
It is written to a temporary file and renamed, so a run killed at any moment
leaves the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

CHECKPOINT = "checkpoint.npz"


class Checkpointable:
    """Mixin: the strategy state to checkpoint is the attributes named in STATE
    (numpy arrays or numbers; a dotted name is an attribute of an attribute)."""

    STATE: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, np.ndarray]:
        """The STATE attributes as numpy arrays."""
        return {name: np.asarray(attrgetter(name)(self)) for name in self.STATE}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the STATE attributes (0-d arrays become Python numbers)."""
        for name in self.STATE:
            value = state[name]
            owner, _, attr = name.rpartition(".")
            setattr(attrgetter(owner)(self) if owner else self, attr,
                    value.item() if value.ndim == 0 else value.copy())


@dataclass
class Checkpoint:
    """What :func:`load` returns."""

    server_round: int
    strategy: dict[str, np.ndarray]
    arrays: ArrayRecord
    document: dict[str, Any]
    torch_rng: np.ndarray


def _rng_document() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    return {"version": version, "state": list(state), "gauss": gauss}


def save(path: Path, server_round: int, strategy: dict[str, np.ndarray], arrays: ArrayRecord,
         document: dict[str, Any]) -> None:
    """Write the checkpoint after `server_round` atomically (with the RNG states)."""
    data = {f"strategy/{k}": v for k, v in strategy.items()}
    data.update({f"arrays/{k}": arrays[k].numpy() for k in arrays})
    data["torch-rng"] = torch.get_rng_state().numpy()
    meta = {"round": server_round, "random": _rng_document(), **document}
    data["document"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        np.savez(file, **data)  # type: ignore[arg-type]  # names are array keys
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def load(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save` (no pickle)."""
    with np.load(path, allow_pickle=False) as npz:
        data = {key: npz[key] for key in npz.files}
    meta = json.loads(str(data.pop("document")))
    strategy = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("strategy/")}
    arrays = ArrayRecord({k.split("/", 1)[1]: Array(v) for k, v in data.items()
                          if k.startswith("arrays/")})
    return Checkpoint(meta.pop("round"), strategy, arrays, meta, data["torch-rng"])


def restore_rng(checkpoint: Checkpoint) -> None:
    """Set Python's and torch's global RNGs to the checkpoint's states."""
    rng = checkpoint.document["random"]
    random.setstate((rng["version"], tuple(rng["state"]), rng["gauss"]))
    torch.set_rng_state(torch.from_numpy(checkpoint.torch_rng.copy()))
