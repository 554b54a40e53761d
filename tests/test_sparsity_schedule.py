"""The cubic pruning schedule: start, middle, end, monotone, pruning rounds."""

import pytest

from fedmask.methods.fedsparsify.schedule import check_schedule, cubic_sparsity, scheduled_sparsity


def test_cubic_values_at_start_middle_and_end():
    assert cubic_sparsity(1, 1, 21, 0.9) == 0.0
    assert cubic_sparsity(11, 1, 21, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))  # 0.7875
    assert cubic_sparsity(21, 1, 21, 0.9) == 0.9  # exact, not approximately
    assert cubic_sparsity(30, 1, 21, 0.9) == 0.9
    assert cubic_sparsity(3, 5, 21, 0.9) == 0.0  # before the start: dense


def test_cubic_with_an_initial_sparsity():
    assert cubic_sparsity(2, 2, 4, 0.8, initial=0.2) == pytest.approx(0.2)
    assert cubic_sparsity(3, 2, 4, 0.8, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.125)


@pytest.mark.parametrize("start, end, every", [(1, 20, 1), (3, 17, 4), (1, 2, 5), (5, 5, 1)])
def test_schedule_is_monotone_and_ends_exactly_at_final(start, end, every):
    values = [scheduled_sparsity(t, start, end, every, 0.9) for t in range(0, end + 3)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[end] == 0.9 and values[start - 1] == 0.0


def test_pruning_rounds_every_f_from_start_and_always_the_last():
    values = [scheduled_sparsity(t, 3, 12, 4, 0.9) for t in range(0, 15)]
    changes = [t for t in range(1, 15) if values[t] != values[t - 1]]
    assert changes == [7, 11, 12]  # 3 is a pruning round too, at sparsity 0
    assert scheduled_sparsity(10, 3, 12, 4, 0.9) == cubic_sparsity(7, 3, 12, 0.9)


@pytest.mark.parametrize("args, option", [((0, 5, 1, 0.9), "prune-start"),
                                          ((6, 5, 1, 0.9), "prune-start"),
                                          ((1, 5, 0, 0.9), "prune-every"),
                                          ((1, 5, 1, 1.0), "final-sparsity"),
                                          ((1, 5, 1, -0.1), "final-sparsity")])
def test_bad_schedules_name_the_option(args, option):
    with pytest.raises(ValueError, match=option):
        check_schedule(*args)
