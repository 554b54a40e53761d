#!/usr/bin/env bash
# Set up (if needed), then run the whole test suite (unit tests and real Flower runs).
# Tests read FashionMNIST from $FEDMASK_TEST_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/python -m pytest -q --durations=15 "$@"
