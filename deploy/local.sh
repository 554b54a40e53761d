#!/usr/bin/env bash
# One-host Flower deployment of fedmask on 127.0.0.1: TLS SuperLink with SuperNode
# authentication, N registered SuperNodes (partition-id=I num-partitions=N).
#
#   deploy/local.sh up   [--nodes N] [--timeout S] [--state-dir DIR]   # prints the connection name
#   deploy/local.sh run  [--app DIR] [--state-dir DIR] [flwr run args, e.g. --run-config "k=v ..."]
#   deploy/local.sh restart superlink|node-I [--state-dir DIR]         # start it again after a crash
#   deploy/local.sh status [--state-dir DIR]
#   deploy/local.sh down [--state-dir DIR]                              # stops all it started, by PID
#
# STATE_DIR (certs, logs, FLWR_HOMEs, PIDs): $FEDMASK_DEPLOY_DIR, else ${TMPDIR:-/tmp}/fedmask-deploy.
# Implementation: deploy/local.py (run with the project's .venv, or $FEDMASK_PYTHON).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "${FEDMASK_PYTHON:-$here/../.venv/bin/python}" "$here/local.py" "$@"
