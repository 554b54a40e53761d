"""Arrays computed once and kept on disk, named by a digest of what they came from.

A missing, unreadable or corrupt entry is computed again and rewritten
(atomically: temporary file, then rename), so processes that race on one
entry all end with the same arrays; a cache folder that cannot be written
only costs the recomputation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]


def entry_path(cache_root: Path, key: tuple) -> Path:
    """Where the arrays for `key` (a tuple of str, int, float, bool) are kept."""
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return Path(cache_root) / "arrays" / f"{digest}.npz"


def fetch(cache_root: Path, key: tuple, compute: Callable[[], Arrays]) -> Arrays:
    """The arrays kept for `key`, else ``compute()``'s, which are then kept."""
    path = entry_path(cache_root, key)
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # absent or damaged: compute it again
    arrays = compute()
    try:
        _store(path, arrays)
    except OSError:
        pass  # a read-only or full cache: the arrays are still returned
    return arrays


def _store(path: Path, arrays: Arrays) -> None:
    """Write `arrays` to `path` atomically; no temporary file is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        try:
            np.savez(tmp, **arrays)  # type: ignore[arg-type]  # names are array keys
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
