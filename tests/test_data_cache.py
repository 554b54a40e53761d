"""fedmask.data.cache: arrays computed once, kept on disk, recomputed when damaged."""

import numpy as np

from fedmask.data import cache as disk_cache


class Counting:
    """A compute function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"a": np.arange(5), "b": np.ones((2, 3), np.uint8)}


def _equal(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_computed_once_then_read_back(tmp_path):
    compute = Counting()
    first = disk_cache.fetch(tmp_path, ("k", 1, 0.5, True), compute)
    second = disk_cache.fetch(tmp_path, ("k", 1, 0.5, True), compute)
    assert compute.calls == 1 and _equal(first, second) and _equal(first, Counting()())
    assert second["b"].dtype == np.uint8
    assert list((tmp_path / "arrays").iterdir()) == [disk_cache.entry_path(tmp_path, ("k", 1, 0.5,
                                                                                      True))]


def test_another_key_is_another_entry(tmp_path):
    compute = Counting()
    for key in (("k", 1), ("k", 2), ("k", "1")):
        disk_cache.fetch(tmp_path, key, compute)
    assert compute.calls == 3


def test_damaged_entry_is_recomputed_and_rewritten(tmp_path):
    compute = Counting()
    path = disk_cache.entry_path(tmp_path, ("k",))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    assert _equal(disk_cache.fetch(tmp_path, ("k",), compute), Counting()())
    assert _equal(disk_cache.fetch(tmp_path, ("k",), compute), Counting()())
    assert compute.calls == 1


def test_unwritable_cache_still_returns_the_arrays(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    compute = Counting()
    for _ in range(2):
        assert _equal(disk_cache.fetch(blocker, ("k",), compute), Counting()())
    assert compute.calls == 2
