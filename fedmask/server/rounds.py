"""The round loop of Flower's ``Strategy.start``, resumable and with a hook per round."""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

AfterRound = Callable[[int, ArrayRecord, MetricRecord | None, MetricRecord | None, float], None]


def run_rounds(strategy: Strategy, grid: Grid, arrays: ArrayRecord, rounds: range,
               timeout: float, train_config: ConfigRecord, evaluate_config: ConfigRecord,
               after_round: AfterRound) -> ArrayRecord:
    """Train and evaluate for `rounds` (e.g. ``range(3, 11)`` to resume after round 2),
    exactly as Flower's ``Strategy.start`` does; call ``after_round(round, arrays,
    train_metrics, evaluate_metrics, aggregate_s)`` after each, `aggregate_s` being
    the seconds ``aggregate_train`` took."""
    for server_round in rounds:
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", server_round, rounds.stop - 1)
        replies = grid.send_and_receive(
            strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout)
        start = time.perf_counter()
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        aggregate_s = time.perf_counter() - start
        arrays = arrays if new_arrays is None else new_arrays
        replies = grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        after_round(server_round, arrays, train_metrics, evaluate_metrics, aggregate_s)
    return arrays
