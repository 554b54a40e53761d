#!/usr/bin/env bash
# Set up (if needed), then run the default simulation: HideNseek on FashionMNIST,
# 10 simulated clients. Extra arguments go to `python -m fedmask.launch`, e.g.
#   ./run.sh --run-config "method='fedavg' num-server-rounds=3"
# Data: $FEDMASK_DATA_ROOT, else ../shared/data when present (offline copy in
# torchvision layout), else ~/.cache/fedmask/data (torchvision downloads it).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
data="${FEDMASK_DATA_ROOT:-}"
if [ -z "$data" ] && [ -d ../shared/data ]; then data="$(cd ../shared/data && pwd)"; fi
overrides=()
if [ -n "$data" ]; then overrides=(--run-config "data-root='$data'"); fi
exec .venv/bin/python -m fedmask.launch --num-supernodes 10 "${overrides[@]}" "$@"
