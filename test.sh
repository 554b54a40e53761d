#!/usr/bin/env bash
# Set up (if needed), then run the whole test suite (unit tests and real Flower runs).
# Tests read FashionMNIST from $FEDMASK_TEST_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
# Two pytest-xdist workers: while one waits on a deployment's deadline or heartbeat, the
# other computes, each on one thread. Tests that share a run or a network lab share a
# worker (tests/conftest.py: SharedRunScheduling). `-n 0` runs all in one process.
.venv/bin/python -m pytest -q --durations=15 -n 2 "$@"
